"""`make demo`'s main job, `conclave demo`, end to end in its own process (its own local Ray,
Serve, embedded Redis and the real pool: SmolLM2-135M-Instruct and its skill experts), as a
user runs it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray


def test_conclave_demo_runs_the_main_job_and_shuts_down_cleanly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "from cluster.cli import main; main()", "demo"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-3000:]
    assert "QUESTION" in out and "EXPERTS (weight)" in out and "ANSWER" in out
    rows = [line for line in out.splitlines() if " miss " in line or " hit " in line]
    assert len(rows) >= 8  # every demo question answered; the repeated one from the cache
    assert any(" hit " in line for line in rows)
    assert sum(" yes " in line for line in rows) >= 4, out  # the skill experts' answers
    assert any(" synthesis " in line for line in rows)
    assert "streamed 'Explain how a vaccine" in out and " chunks, first after " in out
    before = re.search(r"before adding isodate: (\d+)/(\d+) right", out)
    after = re.search(r"after the add: (\d+)/(\d+) right, answered by isodate", out)
    assert before and after, out[-3000:]
    assert int(before[1]) <= 2 and int(after[1]) >= int(after[2]) - 1, (before[0], after[0])
    assert "removed isodate" in out and "shut down cleanly" in out
