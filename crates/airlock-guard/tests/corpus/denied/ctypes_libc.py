# smolagents issue #2094: ctypes was missing from the blocklist; libc.system runs a
# command below every Python-level check.
# rule: dangerous-module
# runtime: stopped
import ctypes

ctypes.CDLL(None).system(("touch " + marker).encode())
