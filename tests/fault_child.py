"""The process tests/test_faults.py kills: analyze with SPECDYN_FAULT_AT set, forked from a forkserver that has
imported specdyn already (a fresh interpreter per kill would spend seconds importing torch each time)."""

import os

import torch

from specdyn.analyze import AnalyzeOptions, analyze


def main(run_dirs: list[str], store: str, fault: str, options: dict) -> None:
    torch.set_num_threads(1)
    os.environ["SPECDYN_FAULT_AT"] = fault
    analyze(run_dirs, store, AnalyzeOptions(**options), show_progress=False)
