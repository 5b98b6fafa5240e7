"""Listening sockets of a process tree, seen through psutil (/proc) as an operator would look at them."""

import ipaddress
import subprocess
import time

import psutil


def listeners(procs: list[psutil.Process]) -> set[tuple[int, str, str, int]]:
    """(pid, command line, address, port) of every listening inet socket of `procs` (gone processes skipped)."""
    found = set()
    for proc in procs:
        try:
            cmd = " ".join(proc.cmdline())[:80]
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.pid, cmd, conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
            pass
    return found


def beyond_loopback(found: set[tuple[int, str, str, int]]) -> list[tuple[int, str, str, int]]:
    """The listeners not bound to a loopback address ('::' and '0.0.0.0' are every interface)."""
    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return (addr.ipv4_mapped or addr).is_loopback if addr.version == 6 else addr.is_loopback
    return sorted(entry for entry in found if not loopback(entry[2]))


def watch_tree(driver: subprocess.Popen, every_s: float = 0.5) -> set[tuple[int, str, str, int]]:
    """Every listener the driver and its descendants opened at any point until the driver exits."""
    seen: set[tuple[int, str, str, int]] = set()
    root = psutil.Process(driver.pid)
    while driver.poll() is None:
        try:
            seen |= listeners([root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            break
        time.sleep(every_s)
    return seen
