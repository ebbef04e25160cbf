# Escape: learn about the host through /proc: its kernel command line, kernel configuration (config.gz), boot id, kernel symbols, keys, timers, scheduler and host-wide load, memory and pressure figures.
# Expect: none of these files exist or show anything of the host in the sandbox; the sandbox's own processes (/proc/self) still do.
import hashlib, os
PATHS = [
    "/proc/cmdline", "/proc/config.gz", "/proc/sys/kernel/random/boot_id", "/proc/kallsyms", "/proc/modules",
    "/proc/keys", "/proc/key-users", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats", "/proc/kcore",
    "/proc/stat", "/proc/meminfo", "/proc/vmstat", "/proc/zoneinfo", "/proc/loadavg", "/proc/uptime",
    "/proc/interrupts", "/proc/diskstats", "/proc/partitions", "/proc/swaps", "/proc/iomem", "/proc/ioports",
    "/proc/pressure/cpu", "/proc/pressure/memory", "/proc/pressure/io", "/proc/sysrq-trigger",
    "/proc/acpi", "/proc/asound", "/proc/scsi", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/driver", "/proc/sys",
]
for p in PATHS:
    try:
        if os.path.isdir(p):
            print(p, "DIR", len(os.listdir(p)))
            continue
        with open(p, "rb") as f:
            data = f.read(1 << 20)
        text = data[:300].decode("latin-1").replace("\n", "\\n")
        print(p, "OK", len(data), hashlib.sha256(data).hexdigest(), text)
        for line in data.decode("latin-1").splitlines():
            if line.startswith(("btime", "MemTotal")):
                print(p, "LINE", line)
    except OSError as e:
        print(p, "ERR", type(e).__name__)
print("self", len(open("/proc/self/status").read()) > 0 if os.path.exists("/proc/self/status") else "absent")
print("cpus", os.cpu_count())
