"""`specdyn derive STORE`: recompute what a store derives from its own SVDs (stability against other checkpoints,
WeightWatcher's heavy-tail metrics), adding arrays an older store lacks; the checkpoints are not read."""

from pathlib import Path
from typing import Annotated

import typer

from specdyn.commands.common import JsonFlag, QuietFlag


def derive_store(store: Path, recompute: bool = False) -> dict:
    """Add or refresh the derived arrays of a store; returns {"store", "rows", "heavy_tail_cells"}."""
    import numpy as np

    from specdyn.errors import EXIT_NOT_FOUND, SpecdynError
    from specdyn.store import damage, is_store, locked, resolve_store, write_session
    from specdyn.store.damage import refuse_damaged
    from specdyn.store.swap import Swap, real_store
    from specdyn.store.writing import derive, fill_from_sv, open_root, recover

    given = Path(store)
    store = real_store(resolve_store(given), named=resolve_store(given) == given)
    missing = SpecdynError(f"{store}: no specdyn store here; run `specdyn analyze RUN_DIR` first", code=EXIT_NOT_FOUND)
    if not is_store(store) and not Swap(store).pending():
        raise missing
    with locked(store, "derive"):  # nothing, not even a killed swap's repair, touches the store before this
        recover(store)
        if not is_store(store):
            raise missing
        refuse_damaged(store)
        try:
            with write_session(store, "derive", lock=False) as root:
                cells = fill_from_sv(root, recompute=recompute)
                derive(root)  # stability arrays, and the marker that tells analyze nothing is left to derive
                rows = int(np.count_nonzero(root["done"][:]))
        except damage.DECODE_ERRORS:
            found = damage.unreadable(open_root(store))
            if found:
                raise damage.damaged(store, damage.describe(found)) from None
            raise
    return {"store": str(store), "rows": rows, "heavy_tail_cells": cells}


def derive_command(
    store: Annotated[
        Path, typer.Argument(help="A specdyn store (or a run dir holding specdyn.zarr).", show_default=False)
    ],
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Recompute the heavy-tail metrics of every row, not only missing ones.")
    ] = False,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
):
    """Add derived arrays to an existing store (heavy-tail metrics, stability) from its stored SVDs."""
    from specdyn import console

    out = derive_store(store, recompute)
    if json_out:
        console.print_json(out)
    else:
        console.info(
            f"{out['store']}: {out['rows']} checkpoints; heavy-tail metrics computed for {out['heavy_tail_cells']} (checkpoint, matrix) cells"
        )


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("derive")(user_errors(derive_command))
