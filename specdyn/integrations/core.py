"""What both callbacks share: the save schedule, writing a checkpoint in specdyn's safetensors format (through
the format registry, atomically, the step in its metadata), and analyzing saved checkpoints with
`specdyn analyze` in one background process whose summary metrics the callbacks hand to their trainer's loggers.

The training process only copies the weights to CPU and writes them (what any checkpoint save costs); the SVDs
run in a separate process with one thread, so a training step never waits for the analysis. While training
keeps every core busy, the analysis is paused during training steps and runs in budgeted pauses between them
(`SHARE` of the training's time), so it costs training at most that share and its metrics arrive while training
runs. Otherwise (GPU training, or fewer torch threads than cores) it runs beside training. Run beside a
multi-threaded CPU step, even a process at nice 19 slowed training 2.5x on 2 cores (each of the step's thread
barriers waits for the analysis's time slice), and at SCHED_IDLE it got no CPU at all until training ended
(benchmarks/README.md).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specdyn.errors import SpecdynError

PREFIX = "specdyn/"
PAUSABLE = hasattr(signal, "SIGSTOP")  # POSIX; elsewhere the analysis runs at idle priority only
# The share of training's wall time the analysis may take, in pauses between steps, while training keeps every
# core busy (0: never pause training; the analysis then runs only on idle cores).
SHARE = 0.1
MAX_PAUSE = 5.0  # seconds: the longest pause one step gives the analysis


def schedule(max_steps: int, log_spaced: int | None = None, every: int | None = None, start: int = 0) -> list[int]:
    """The steps to save at: `log_spaced=N` points over [start, max_steps] (dense early, as the paper's figures
    need), or every K steps, or (neither) about 20 evenly; always both ends (specdyn.train.save_steps)."""
    from specdyn.train import save_steps

    if log_spaced is not None and every is not None:
        raise SpecdynError("pass log_spaced or every, not both")
    if max_steps is None or max_steps < start:
        raise SpecdynError(f"max_steps {max_steps}: the callbacks need the run's total step count to plan saves")
    try:
        return save_steps(start, int(max_steps), every=every, log=log_spaced)
    except ValueError as e:
        raise SpecdynError(str(e)) from None


def cpu_state_dict(module) -> dict:
    """The module's tensors as CPU copies, tied (shared) tensors once under their first name, as
    `save_pretrained` does; nothing in training is touched."""
    out, seen = {}, set()
    for name, t in module.state_dict().items():
        if not hasattr(t, "data_ptr"):
            continue
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape))
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu", copy=True).contiguous()
    return out


def model_config(model) -> dict:
    """The model's config.json as `save_pretrained` writes it (with `architectures` and `dtype`), or {} for a
    model without a transformers config."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_json_string"):
        return {}
    import copy
    import json

    try:
        cfg = copy.deepcopy(cfg)  # save_pretrained sets these two on the model's own config; we leave it alone
        cfg.architectures = [type(model).__name__.removeprefix("FSDP")]
        if getattr(model, "dtype", None) is not None:
            cfg.dtype = str(model.dtype).removeprefix("torch.")
        return json.loads(cfg.to_json_string(use_diff=True))
    except Exception:  # a config that does not serialise: the series is analyzed from its tensors alone
        return {}


def write_checkpoint(run_dir: Path, step: int, state: dict, task: str, config: dict) -> Path:
    """One checkpoint through the safetensors format's writer, written beside and renamed into place."""
    from specdyn.files import atomic_path
    from specdyn.io.base import Saved
    from specdyn.io.registry import get_format

    fmt = get_format("safetensors")
    path = Path(run_dir) / fmt.checkpoint_name(step)
    with atomic_path(path) as tmp:
        fmt.write(tmp, Saved(state, step, task, config))
    return path


def analyze_command(run_dir: Path, store: Path | None) -> list[str]:
    """`specdyn analyze` as a separate interpreter: no pickling, and the user's training script is never
    re-imported (as multiprocessing's spawn would do with an unguarded `__main__`).

    `-P`: the training script's working folder is not put on the child's path, so a `typer.py` (or any module)
    lying there cannot shadow a dependency. Not `-I`, which would also drop PYTHONPATH and the user's site
    packages, where a user's specdyn and its dependencies may be installed (`analyze_env` keeps specdyn found)."""
    cmd = [sys.executable, "-P", "-m", "specdyn", "analyze", str(Path(run_dir).absolute()), "--quiet"]
    return cmd + (["--out", str(Path(store).absolute())] if store else [])


def analyze_env(environ=None) -> dict[str, str]:
    """The background analyze's environment: one thread per BLAS, and the folder this specdyn was imported from
    first on PYTHONPATH unless it is a site-packages folder (a source checkout then still imports under -P)."""
    import site

    env = {**(os.environ if environ is None else environ)}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parents[2])
    sites = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in sites:
        env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in [env.get("PYTHONPATH")] if p]])
    return env


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_bound(module) -> bool:
    """Whether training computes on the CPU with a thread on every core (torch's intra-op threads): then an
    analysis running beside it stalls each of the step's thread barriers, so it runs only in pauses between
    steps. GPU training, or CPU training on fewer threads than cores, leaves cores to the analysis."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return (param is None or param.device.type == "cpu") and torch.get_num_threads() >= cores()


def idle_priority(pid: int) -> None:
    """Schedule a process only when a core is otherwise idle (Linux SCHED_IDLE; elsewhere the lowest nice)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 19)
        except (AttributeError, OSError):
            pass


def summaries(store: Path, known: set[int] = frozenset()) -> list[tuple[int, dict]]:
    """Per completed step: the mean over matrices of every metric declared with a `summary` (spectral/metrics.py:
    effective and stable rank, stability against the previous checkpoint, alpha), and per matrix kind for those
    declared "kind" (alpha, docs/method.md §10)."""
    import warnings

    import numpy as np

    from specdyn.spectral.metrics import METRICS
    from specdyn.store import SpectralStore

    st = SpectralStore.open(store)
    kinds = [st.matrix_spec(n).kind for n in st.matrices]
    logged = {m.name: m.summary for m in METRICS.values() if m.summary and m.axis == "matrix"}
    cols = {name: st.metric(name) for name in logged}
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (the first stability_prev_score)
        for i, step in enumerate(st.steps):
            if int(step) in known:
                continue
            m = {PREFIX + name: float(np.nanmean(cols[name][i])) for name in logged}
            for name in (n for n, how in logged.items() if how == "kind"):
                for kind in sorted(set(kinds)):
                    sel = [j for j, k in enumerate(kinds) if k == kind]
                    m[f"{PREFIX}{name}/{kind}"] = float(np.nanmean(cols[name][i, sel]))
            out.append((int(step), {k: v for k, v in m.items() if np.isfinite(v)}))
    return out


@dataclass
class SeriesSaver:
    """Saves a model's weights at the scheduled steps into `run_dir`, and with `analyze` runs `specdyn analyze`
    on them in a background process; `poll()` returns the summary metrics that have arrived since last asked."""

    run_dir: Path
    log_spaced: int | None = None
    every: int | None = None
    max_steps: int | None = None
    analyze: bool = False
    store: Path | None = None
    task: str = "external"
    config: dict[str, Any] = field(default_factory=dict)
    share: float = SHARE
    steps: list[int] = field(default_factory=list, init=False)
    saved: list[int] = field(default_factory=list, init=False)
    save_seconds: float = field(default=0.0, init=False)
    pause_seconds: float = field(default=0.0, init=False)  # training's time given to the analysis between steps

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        if self.log_spaced is not None and self.every is not None:
            raise SpecdynError("pass log_spaced or every, not both")
        self._proc = None
        self._errlog = None
        self._dirty = False
        self._logged: set[int] = set()
        self._paused = False
        self._atexit = False
        self._busy = True  # training computes on every core (cpu_bound, at each save)
        self._clock: float | None = None  # when the last step ended

    @property
    def store_path(self) -> Path:
        from specdyn.store.layout import default_store

        return Path(self.store) if self.store else default_store(self.run_dir)

    def plan(self, max_steps: int | None) -> list[int]:
        """Fix the schedule once the trainer knows its total steps (an explicit `max_steps` wins)."""
        self.steps = schedule(self.max_steps if self.max_steps is not None else max_steps, self.log_spaced, self.every)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self.steps

    def wants(self, step: int) -> bool:
        return step in self._step_set() and step not in self.saved

    def _step_set(self) -> set[int]:
        if getattr(self, "_set_for", None) is not self.steps:
            self._set, self._set_for = set(self.steps), self.steps
        return self._set

    def write_json(self, name: str, obj) -> None:
        """A JSON file beside the series (the model's config, the training log), written atomically."""
        import json

        self.write_text(name, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """A file beside the series, written beside and renamed into place (a reader never sees half of it; a
        link planted at its name is refused)."""
        from specdyn.files import atomic_write

        atomic_write(self.run_dir / name, text)

    def save(self, step: int, module) -> Path:
        """Write the checkpoint of `step` now; the analysis, if any, is started in the background."""
        t0 = time.perf_counter()
        path = write_checkpoint(self.run_dir, step, cpu_state_dict(module), self.task, self.config)
        self._busy = cpu_bound(module)
        self.saved.append(step)
        self.save_seconds += time.perf_counter() - t0
        if self.analyze:
            self._dirty = True
            self._submit()
        return path

    def _submit(self) -> None:
        """One analysis at a time: a save during a running analysis is picked up by the next one."""
        if not self._dirty or self._proc is not None:
            return
        self._dirty = False
        self._errlog = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(analyze_command(self.run_dir, self.store), env=analyze_env(),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._errlog)  # fmt: skip
        self._paused = False
        if self.share <= 0 or not PAUSABLE:
            idle_priority(self._proc.pid)
        elif self._busy:
            self._pause()
        if not self._atexit:
            atexit.register(self._resume)  # a paused analysis is never left behind
            self._atexit = True

    def _signal(self, sig) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(self._proc.pid, sig)

    def _pause(self) -> None:
        if self._proc is not None and PAUSABLE and not self._paused:
            self._signal(signal.SIGSTOP)
            self._paused = True

    def _resume(self) -> None:
        if self._proc is not None and self._paused:
            self._signal(signal.SIGCONT)
            self._paused = False

    def _share_cpu(self) -> None:
        """Called once a step: while training computes on every core, give a running analysis `share` of the last
        step's time, then pause it again; otherwise let it run beside training."""
        now = time.monotonic()
        last, self._clock = self._clock, now
        if self._proc is None or self.share <= 0 or not PAUSABLE:
            return
        if not self._busy:
            self._resume()
        elif last is not None:
            self._resume()
            pause = min(self.share * (now - last), MAX_PAUSE)
            time.sleep(pause)
            self._pause()
            self.pause_seconds += pause
            self._clock = time.monotonic()  # the next step's time starts after the pause

    def _collect(self) -> list[tuple[int, dict]]:
        """The finished analysis's new summary metrics (a failed one warns, and the next save retries)."""
        proc, self._proc = self._proc, None
        if proc.returncode != 0:
            self._errlog.seek(0)
            tail = self._errlog.read().decode(errors="replace").strip().splitlines()[-1:]
            warnings.warn(f"specdyn analyze {self.run_dir} failed ({proc.returncode}): {' '.join(tail)}", stacklevel=3)
            self._errlog.close()
            return []
        self._errlog.close()
        out = summaries(self.store_path, self._logged)
        self._logged.update(s for s, _ in out)
        return out

    def poll(self) -> list[tuple[int, dict]]:
        """Summary metrics of newly analyzed steps (non-blocking); starts the next analysis if saves are waiting."""
        out = []
        if self._proc is not None and self._proc.poll() is not None:
            out = self._collect()
        if self.analyze:
            self._submit()
            self._share_cpu()
        return out

    def finish(self, timeout: float | None = None) -> list[tuple[int, dict]]:
        """Wait for the analyses of every saved checkpoint and return their metrics."""
        out = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.analyze and (self._proc is not None or self._dirty):
            if self._proc is not None:
                self._resume()  # training is over: the analysis runs freely
                self._busy = False
                self._proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            out += self.poll()
        return out
