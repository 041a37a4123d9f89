"""How long a checkpoint's bytes may take on disk, and the collective timeout that covers it: while one rank
writes, the others wait for it in a collective (rank 0 alone writes the whole without FSDP; under FSDP each
rank its share, and the next save waits for the slowest), and a wait longer than the process group's timeout
ends the run. The rate is a conservative one, so that a slow disk makes a save slow, never fatal."""

import datetime
import math

import torch.distributed as dist

# bytes a second a checkpoint is written at, and read back at to hash it: a network filesystem's share of one
# client (a local SSD writes ~0.5 GB/s, a data-centre NVMe disk 1-3 GB/s)
DISK_BYTES_PER_S = 100 * 10**6
SLACK_MINUTES = 1  # the rest of a save: the finite check, the small files, the rename


def save_minutes(written):
    """The least collective timeout, in whole minutes, that covers a save in which the slowest rank writes
    `written` bytes: written once and read back once to hash, at DISK_BYTES_PER_S, plus SLACK_MINUTES."""
    return SLACK_MINUTES + math.ceil(2 * written / DISK_BYTES_PER_S / 60)


def cover_save(written, minutes):
    """None when a collective timeout of `minutes` covers a save in which the slowest rank writes `written`
    bytes; else the process group's timeout is raised to save_minutes(written) (each rank its own) and one
    warning line says so."""
    need = save_minutes(written)
    if minutes >= need:
        return None
    if dist.is_available() and dist.is_initialized():
        dist.distributed_c10d._set_pg_timeout(datetime.timedelta(minutes=need))
    return (
        f"warning: --collective_timeout_minutes={minutes:g} is below the {need} minutes a checkpoint's "
        f"{written / 2**30:.3g} GiB on the slowest rank may take at {DISK_BYTES_PER_S / 10**6:g} MB/s (written and "
        f"read back to hash): raised to {need}"
    )
