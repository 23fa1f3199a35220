"""Writing a simulated fleet to disk and reading it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pandas as pd
import pytest

from predictor.simulate import FleetSpec, read_dataset, simulate, write_dataset


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip(tmp_path: Path, fmt: Literal["csv", "parquet"]) -> None:
    spec = FleetSpec(nodes=6, pools=2, duration_s=8 * 3600, seed=6, failure_rate_per_node_day=8)
    fleet = simulate(spec)
    assert len(fleet.events) and fleet.nodes["standby"].isna().any()  # NaN and None survive

    write_dataset(fleet, tmp_path, fmt=fmt)
    back = read_dataset(tmp_path)

    assert (tmp_path / f"samples.{fmt}").exists()
    assert json.loads((tmp_path / "nodes.json").read_text())[0]["health_url"] is None
    for name in ("samples", "events", "nodes", "traps"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(fleet, name), check_exact=True)
    assert back.spec == spec


def test_rejects_unknown_format(tmp_path: Path) -> None:
    fleet = simulate(FleetSpec(nodes=1, pools=1, duration_s=60, seed=0))
    with pytest.raises(ValueError):
        write_dataset(fleet, tmp_path, fmt="xlsx")  # type: ignore[arg-type]
