"""Ray's own start fails for real, and study.cluster.init_ray stops what it left and starts again.

The failure is the one seen in CI on a loaded machine: the raylet gives up waiting for the dashboard
agent's port file, and ray.init waits 30 s for a node that never registers ("The current node timed
out during startup"). Here the agent of the first start is made slow for real: a sitecustomize on
PYTHONPATH sleeps in the first dashboard agent process this test's Ray starts (a marker file makes it
once). The retry's agent starts normally.

Budget: ~40 s (the raylet's wait, ray.init's 30 s, then a normal start).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import clean_env

from study.faults.leftovers import session_processes

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_local_start_is_cleaned_up_and_tried_once_more(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    marker = tmp_path / "agent_delayed"
    (hooks / "sitecustomize.py").write_text(
        textwrap.dedent(f"""\
        import os, sys, time
        if any(a.endswith("dashboard/agent.py") for a in sys.argv) and not os.path.exists({str(marker)!r}):
            open({str(marker)!r}, "w").close()
            time.sleep(90)  # past the raylet's wait for this agent's port file
        """)
    )
    code = (
        "import ray; from study.cluster import init_ray; "
        "print('session', init_ray(None, False, dashboard=False)); print('cpus', ray.cluster_resources()['CPU'])"
    )
    env = clean_env(PYTHONPATH=os.pathsep.join([str(hooks), str(ROOT)]))
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert marker.exists()  # the first start's agent was the slow one
    note = re.search(
        r"^note: Ray's local start failed \(The current node timed out during startup\); stopped the "
        r"(\d+) process\(es\) it left and trying once more$",
        run.stdout,
        re.MULTILINE,
    )
    assert note, run.stdout
    assert int(note[1]) >= 2  # at least the GCS and the slow agent
    assert "started a local Ray: 2 CPU" in run.stdout and "cpus 2.0" in run.stdout
    # Nothing of the failed start runs on: its session folder is the older one of this driver's two.
    (session,) = re.findall(r"^session (\S+)$", run.stdout, re.MULTILINE)
    pid = Path(session).name.rsplit("_", 1)[1]
    failed = [f for f in Path(session).parent.glob(f"session_*_{pid}") if str(f) != session and f.is_dir()]
    assert len(failed) == 1, failed
    assert session_processes(str(failed[0])) == {}
