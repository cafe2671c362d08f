"""launch/pod/tpu.sh and launch/pod/slurm.sbatch in dry-run mode: the exact commands they
would run, parsed back as shell words."""

import os
import pathlib
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TPU, SLURM = ROOT / "launch" / "pod" / "tpu.sh", ROOT / "launch" / "pod" / "slurm.sbatch"


def _commands(argv, env=None):
  out = subprocess.run(
      ["bash", *map(str, argv)],
      capture_output=True,
      text=True,
      env={**os.environ, **(env or {})},
      cwd="/",
      timeout=60,
  )
  assert out.returncode == 0, out.stderr
  return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


def _tpu(*extra, type_="v5p-64"):
  return [
      TPU,
      "--tpu=flock-pod",
      "--zone=us-east5-a",
      f"--type={type_}",
      f"--config=configs/pods.py:{type_}",
      "--workdir=/mnt/shared/run1",
      "--dry_run",
      *extra,
  ]


def test_tpu_dry_run_creates_copies_installs_runs():
  cmds = _commands(_tpu("--", "--config.model.weights=hf:/mnt/llama 3", "--config.seed=1"))
  g = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = ["--zone=us-east5-a"]
  assert cmds[0] == g + ["describe", "flock-pod"] + where
  assert cmds[1] == g + ["create", "flock-pod"] + where + [
      "--accelerator-type=v5p-64",
      "--version=v2-alpha-tpuv5",
  ]
  assert cmds[2][:3] == ["tar", "-C", str(ROOT)] and "--exclude=.git" in cmds[2]
  archive = cmds[2][-2]
  assert cmds[3] == g + ["scp", archive, "flock-pod:flock_jax.tgz"] + where + ["--worker=all"]
  install, train = cmds[4], cmds[5]
  assert install[:5] == g + ["ssh"] and "--worker=all" in install
  assert "pip install -q -e . 'jax[tpu]==0.10.2'" in install[-1]
  assert train[-2] == "--worker=all" and train[-1].startswith("--command=")
  remote = shlex.split(train[-1].removeprefix("--command="))
  assert remote[:4] == ["cd", "flock_jax", "&&", "FLOCK_CLUSTER=tpu"]
  assert remote[4:] == [
      "python3",
      "launch/train.py",
      "--config=configs/pods.py:v5p-64",
      "--workdir=/mnt/shared/run1",
      "--config.model.weights=hf:/mnt/llama 3",  # a space survives both quotings
      "--config.seed=1",
  ]
  assert not pathlib.Path(archive).exists()  # a dry run runs nothing


def test_tpu_dry_run_variants():
  cmds = _commands(_tpu("--spot", "--project=p1", type_="v5e-256"))
  create = cmds[1]
  assert "--accelerator-type=v5litepod-256" in create and "--spot" in create
  assert "--project=p1" in create and "--version=v2-alpha-tpuv5-lite" in create
  reuse = _commands(_tpu("--reuse"))
  assert [c[4] for c in reuse[:1]] == ["describe"] and not any("create" in c for c in reuse)


@pytest.mark.parametrize(
    "argv,err",
    [(["--zone=z"], "--tpu is required"), (["--bogus"], "unknown argument --bogus")],
)
def test_tpu_usage_errors(argv, err):
  out = subprocess.run(["bash", str(TPU), *argv], capture_output=True, text=True)
  assert out.returncode == 2 and err in out.stderr


def test_slurm_dry_run():
  env = {"DRY_RUN": "1", "SLURM_JOB_NUM_NODES": "2", "FLOCK_DIR": "/shared/flock_jax"}
  env["FLOCK_VENV"] = "/shared/venv"
  out = subprocess.run(
      ["bash", str(SLURM), "configs/pods.py:16xh100", "/shared/run1", "--config.seed=3"],
      capture_output=True,
      text=True,
      env={**os.environ, **env},
  )
  assert out.returncode == 0, out.stderr
  cmds = [shlex.split(x[2:]) for x in out.stdout.splitlines() if x.startswith("+ ")]
  assert cmds[0] == ["cd", "/shared/flock_jax"]
  assert cmds[1] == ["source", "/shared/venv/bin/activate"]
  assert cmds[2] == ["mkdir", "-p", "/shared/run1"]
  assert cmds[3] == [
      "srun",
      "--nodes=2",
      "--ntasks-per-node=1",
      "--gpus-per-node=8",
      "--kill-on-bad-exit=1",
      "--export=ALL,FLOCK_CLUSTER=slurm",
      "python",
      "launch/train.py",
      "--config=configs/pods.py:16xh100",
      "--workdir=/shared/run1",
      "--config.seed=3",
  ]
  assert not pathlib.Path("/shared/run1").exists()


def test_slurm_header_asks_one_task_per_node():
  text = SLURM.read_text()
  assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=8" in text
  usage = subprocess.run(["bash", str(SLURM)], capture_output=True, text=True)
  assert usage.returncode == 2 and "usage:" in usage.stderr
