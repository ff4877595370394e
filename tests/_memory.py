"""Peak resident memory as the memory tests' fresh processes measure it: the process's own high-water mark
(VmHWM in /proc/self/status), not ru_maxrss, which Linux carries over exec from the parent: under a pytest
worker of a GB or more, a child's "growth" read 0 whatever it used, and the bounds the tests assert held
vacuously. `PEAK_KIB` is source to put before a probe script: it defines `peak_kib()`."""

PEAK_KIB = '''
def peak_kib():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
'''
