# Escape: exhaust the pending-signals budget (RLIMIT_SIGPENDING) the kernel charges up to the creator of the sandbox's user namespace: block a real-time signal and queue it to itself until EAGAIN, and keep it queued, so that host root's next timer_create() fails (`timeout 1 true` breaks) and other sandboxes cannot queue signals.
# Expect: the sandbox stops at its own small share; the host can still create a timer and a second sandbox can still queue a signal.
# Inputs: `signals`, how many to queue at most (a bounded loop). They stay queued after the cell.
import errno, signal, threading
queued, stopped = 0, "limit"
try:
    me = threading.get_ident()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
    while queued < signals:
        try:
            signal.pthread_kill(me, signal.SIGRTMIN)
        except OSError as e:
            stopped = errno.errorcode.get(e.errno, str(e.errno))
            break
        queued += 1
except (AttributeError, ValueError, OSError) as e:
    stopped = "unavailable"
print("signals", queued, stopped)
