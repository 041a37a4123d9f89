"""Run under torchrun by tests/test_fsdp.py: each rank rolls out its own prompts with the model sharded
(FSDP) and with an unsharded copy, and writes what it saw:

    torchrun --nproc_per_node 2 tests/fsdp_ranks.py OUT MODEL [MODEL ...]     # OUT/rank{r}.json: a row per model

and, last, the mixed-precision policy on the first model.

Threshold decoding gives the ranks different numbers of forwards: inside fsdp.gathered no forward
may be a collective, and each sharded module's weights are gathered exactly once.
"""

import copy
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup  # noqa: E402

from likelihood import draws_logp, make_draws  # noqa: E402
from plumbing import ddp, fsdp  # noqa: E402
from plumbing.logits import forward_logits  # noqa: E402
from plumbing.model import load  # noqa: E402
from sample import generate  # noqa: E402

gathers = [0]
unshard = FSDPParamGroup.unshard


def counted(group, *a, **k):  # an unshard that gathers (not one whose weights are already whole)
    gathers[0] += not group.is_unsharded and group._all_gather_result is None
    return unshard(group, *a, **k)


def check(name, rank):
    """What rank `rank` sees of model `name`, sharded and not."""
    model, tok = load(name)
    plain = copy.deepcopy(model).eval()
    fsdp.shard(model, mixed_precision=False)
    model.eval()
    # rank-dependent prompts, so the ranks take different numbers of threshold steps
    prompts = [list(range(5 + rank, 9 + 3 * rank)), list(range(7, 10 + rank))]
    settings = dict(max_completion_length=16, block_length=8, sampling_steps=8, mask_id=tok.mask_token_id)
    settings |= dict(eos_ids=tok.eos_ids, pad_id=tok.pad_token_id, temperature=0.7)
    threshold = settings | dict(unmasking="threshold", threshold=0.5 + 0.49 * rank)
    fixed = settings | dict(unmasking="low_confidence")  # a block model: KV-cached
    forwards, gathers[0] = [0], 0
    model.register_forward_pre_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1))
    with torch.no_grad(), fsdp.gathered(model):
        sharded = generate(model, prompts, **threshold, generator=ddp.seeded(0, "rollout", rank))
        draws = make_draws("stepwise", sharded, 2, ddp.seeded(0, "draws", rank), "uniform")
        sharded_draws = draws_logp(model, sharded, draws)
        sharded_fixed = generate(model, prompts, **fixed, generator=ddp.seeded(1, rank))
    gathered_once = gathers[0]
    with torch.no_grad():
        alone = generate(plain, prompts, **threshold, generator=ddp.seeded(0, "rollout", rank))
        alone_draws = draws_logp(plain, alone, draws)
        alone_fixed = generate(plain, prompts, **fixed, generator=ddp.seeded(1, rank))
    same = lambda a, b: torch.equal(a.ids, b.ids) and torch.equal(a.unmask_step, b.unmask_step)  # noqa: E731
    return dict(
        tokens_equal=same(sharded, alone),
        fixed_equal=same(sharded_fixed, alone_fixed) and torch.equal(sharded_fixed.logp, alone_fixed.logp),
        logp_diff=float((sharded.logp - alone.logp).abs().max()),
        draws_diff=float((sharded_draws - alone_draws).abs().max()),
        forwards=forwards[0],
        all_gathers=gathered_once,
        sharded_modules=sum(isinstance(m, FSDPModule) for m in model.modules()),
    )


def mixed_precision(name, rank):
    """The policy train.py uses on CUDA (fsdp.shard(mixed_precision=True)), here on the CPU: float32
    weights and gradients, bf16 compute (logits within bf16 rounding of float32's, not equal)."""
    model, _ = load(name)
    ids = torch.randint(5, 60, (2, 12), generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        want = forward_logits(model, ids)
    fsdp.shard(model, mixed_precision=True)
    logits = forward_logits(model, ids)
    logits.float().logsumexp(-1).mean().backward()
    p = next(model.parameters())
    diff = float((logits.detach().float() - want).abs().max())
    row = dict(weights=str(p.dtype), grads=str(p.grad.dtype), compute=str(logits.dtype), diff=diff)
    return row


FSDPParamGroup.unshard = counted
# the processes started and ended as train.py's are: the sharded models hold the group past its destruction
with ddp.rank_end(), ddp.processes(sharded=True):
    rows = [check(name, dist.get_rank()) for name in sys.argv[2:]] + [mixed_precision(sys.argv[2], dist.get_rank())]
    with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(rows, f)
