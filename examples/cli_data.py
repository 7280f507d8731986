"""Write the two real data sets of ``docs/cli.md`` as the CSV files a user would have (offline, statsmodels).

    python examples/cli_data.py data/

* ``macro_quarterly.csv``: US macro data (statsmodels macrodata, public domain), 1959Q1-2009Q3, eight series
  stacked in a long table (``quarter`` start dates, ``series`` id, ``value``); the series differ in scale by
  four orders of magnitude (real GDP ~ 10^4, the T-bill rate ~ 1).
* ``elec_equip_monthly.csv``: Eurostat orders of electrical equipment (statsmodels elec_equip, euro area,
  index 2005 = 100), 1995-01 to 2016-05, one series (``month`` start dates, ``orders``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

MACRO_SERIES = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate")


def macro_quarterly() -> pd.DataFrame:
    import statsmodels.api as sm

    data = sm.datasets.macrodata.load_pandas().data
    quarters = pd.date_range("1959-01-01", periods=len(data), freq="QS-OCT").strftime("%Y-%m-%d")
    parts = [pd.DataFrame({"quarter": quarters, "series": name, "value": data[name]}) for name in MACRO_SERIES]
    return pd.concat(parts, ignore_index=True)


def elec_equip_monthly() -> pd.DataFrame:
    from statsmodels.datasets import elec_equip

    frame = elec_equip.load_pandas().data.reset_index()
    frame.columns = ["month", "orders"]
    frame["month"] = pd.to_datetime(frame["month"]).dt.strftime("%Y-%m-%d")
    return frame


def main(folder: str = "data") -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("macro_quarterly.csv", macro_quarterly()), ("elec_equip_monthly.csv", elec_equip_monthly())):
        frame.to_csv(out / name, index=False)
        print(f"wrote {out / name}: {len(frame)} rows")


if __name__ == "__main__":
    main(*sys.argv[1:2])
