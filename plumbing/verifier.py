"""MATH's answer check: math-verify in a worker process, so that a pathological answer (9^{9^{9}}) is
cut off at its time limit instead of hanging the run."""

import multiprocessing as mp

worker = None  # (process, pipe) of the running worker


def serve(conn):
    """The worker: warm up, then answer (gold, pred) pairs with math-verify's verdict."""
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle: no traceback from here

    from math_verify import parse, verify

    logging.disable(logging.WARNING)  # it warns on every call that we do the timing ourselves
    # sympy and the LaTeX parser load lazily on first use: warm them up before the time limit applies
    verify(
        parse("\\boxed{2\\sin x\\cos x}", parsing_timeout=None),
        parse("\\boxed{\\sin 2x}", parsing_timeout=None),
        timeout_seconds=None,
    )
    conn.send("ready")
    while True:
        try:
            gold, pred = conn.recv()
        except EOFError:  # the trainer has ended (under torchrun without Python's exit, which stops daemons)
            return
        try:
            ok = bool(
                verify(parse(gold, parsing_timeout=None), parse(pred, parsing_timeout=None), timeout_seconds=None)
            )
        except Exception:
            ok = False
        conn.send(ok)


STARTUP_SECONDS = 300  # importing sympy and math-verify and one warm-up call, on a busy machine


def equal(gold, pred, time_limit):
    """math-verify's verdict on gold and pred within time_limit seconds; False past it (the worker is
    killed, and a fresh one, warm in milliseconds, answers the next call)."""
    global worker
    if worker is None or not worker[0].is_alive():
        # forkserver: a clean single-threaded parent with math_verify preloaded, so a respawn after a
        # kill takes milliseconds, and no torch threads or CUDA state are forked
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["math_verify"])
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(child,), daemon=True)
        proc.start()
        child.close()  # only the worker holds its end now: a worker that dies is an EOFError, not a wait forever
        if not parent.poll(STARTUP_SECONDS):  # start-up is not charged to the call's time limit, but is bounded
            proc.kill()
            raise RuntimeError(f"math-verify's worker did not start within {STARTUP_SECONDS} s")
        parent.recv()
        worker = (proc, parent)
    proc, conn = worker
    try:
        conn.send((gold, pred))
        if conn.poll(time_limit):
            return conn.recv()
    except (EOFError, OSError):  # the worker died mid-call (killed from outside): score False, respawn next call
        pass
    proc.kill()  # overran or died: a fresh worker starts on the next call
    proc.join()
    conn.close()
    worker = None
    return False
