# -*- test-case-name: tests.test_offload_program -*-
"""
Loading C{channeldata.bpf.o} into the kernel and reaching its maps: libbpf
(C{libbpf.so.1}) through C{ctypes}, so the fast path needs no Python
dependency, only the Debian package C{libbpf1} (and C{clang} and
C{libbpf-dev} to build the object: C{make offload}).

Everything that keeps the program from running here (no libbpf, no
object, no privilege, a kernel that refuses it) is one
L{OffloadUnavailable} with a one-line reason, so the control plane can say
why it relays in user space and carry on doing so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from typing import Dict, Iterator, List, Optional, Tuple

OBJECT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "channeldata.bpf.o")
"""
Where C{make offload} puts the compiled program.
"""

PROGRAM_NAME = "turnrelay_tc"
XDP_PROGRAM_NAME = "turnrelay_xdp"
MAP_NAMES = ("to_peer", "to_client", "stats")

STATS = (
    "clientToPeer",
    "peerToClient",
    "passedNotOurs",
    "passedUnsupported",
    "redirectFailed",
)
"""
The names of the indexes of the program's C{stats} map, in its order: what
it relayed each way, what it passed up to the stack (not for it, or not
something it rewrites), and what it could not route or redirect.
"""

TC_ACT_UNSPEC = -1
"""
What the program returns for a packet it leaves alone: tcx's C{TCX_NEXT},
the next program on the interface (another worker's), then the stack.
"""
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
"""
What the program returns for a packet it relayed; in test mode (see
L{KernelProgram.load}) the packet is rewritten but not sent anywhere.
"""

XDP_DROP = 1
XDP_PASS = 2
"""
What the XDP program returns for a packet it leaves to the stack.
"""
XDP_TX = 3
XDP_REDIRECT = 4
"""
What the XDP program returns for a packet it relayed (C{XDP_TX} when it
leaves by the device it came in on); in test mode it returns
C{XDP_REDIRECT} with the rewritten packet, sent nowhere.
"""

XDP_DRIVER = "driver"
XDP_GENERIC = "generic"
"""
The modes an XDP program runs in: in the driver, before any socket buffer
exists (native XDP), or in the stack's receive path for drivers without
it (generic, or skb, mode: correct, not much faster than TC).
"""

# enum bpf_attach_type: BPF_XDP
_BPF_XDP = 37
# XDP_FLAGS_* (linux/if_link.h)
_XDP_FLAGS = {XDP_GENERIC: 1 << 1, XDP_DRIVER: 1 << 2}

# enum bpf_attach_type: BPF_TCX_INGRESS (Linux 6.6), which Debian 12's
# headers and libbpf 1.1 do not name yet.
_BPF_TCX_INGRESS = 46
# libbpf_print_level
_LIBBPF_WARN = 0
# bpf_map_update_elem flags
_BPF_ANY = 0


class OffloadUnavailable(Exception):
    """
    The kernel program cannot run here; the message says why, in one line.
    """


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _LinkCreateOpts(ctypes.Structure):
    # struct bpf_link_create_opts of libbpf 1.1 (the union as its largest
    # member, kprobe_multi's five fields).
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("iter_info", ctypes.c_void_p),
        ("iter_info_len", ctypes.c_uint32),
        ("target_btf_id", ctypes.c_uint32),
        ("union", ctypes.c_uint64 * 4),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_libbpf: Optional[ctypes.CDLL] = None
_libc: Optional[ctypes.CDLL] = None
# What libbpf said at warning level or above since the last _drainLog().
_log: List[str] = []


def _collect(level: int, fmt: Optional[bytes], args: Optional[int]) -> int:
    # libbpf prints with a va_list: format it with libc's vsnprintf.  On
    # x86-64 and arm64 alike a va_list argument travels as a pointer.
    if level <= _LIBBPF_WARN + 1 and fmt is not None and _libc is not None:
        buffer = ctypes.create_string_buffer(1 << 20)  # a whole verifier log
        _libc.vsnprintf(buffer, len(buffer), fmt, ctypes.c_void_p(args))
        _log.append(buffer.value.decode("utf-8", "replace"))
    return 0


# Kept alive for as long as libbpf may call it.
_printer = _PRINT_FN(_collect)


def _drainLog() -> List[str]:
    lines = "".join(_log).splitlines()
    del _log[:]
    return [line for line in lines if line.strip()]


def _library() -> ctypes.CDLL:
    """
    Open libbpf once, declare the functions used and capture its messages
    instead of letting it print to standard error.

    @raise OffloadUnavailable: there is no libbpf.
    """
    global _libbpf, _libc
    if _libbpf is not None:
        return _libbpf
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise OffloadUnavailable(
            f"libbpf.so.1 is not installed (Debian package libbpf1): {e}"
        ) from None
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    _libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    vp, i, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    signatures: Dict[str, Tuple[object, List[object]]] = {
        "libbpf_set_print": (vp, [_PRINT_FN]),
        "libbpf_num_possible_cpus": (i, []),
        "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_program__fd": (i, [vp]),
        "bpf_map__name": (ctypes.c_char_p, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map__key_size": (u32, [vp]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_map__initial_value": (vp, [vp, ctypes.POINTER(ctypes.c_size_t)]),
        "bpf_map__set_initial_value": (i, [vp, vp, ctypes.c_size_t]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_link_create": (i, [i, i, ctypes.c_int, vp]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(_TestRunOpts)]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    lib.libbpf_set_print(_printer)
    _libbpf = lib
    return lib


def _check(result: int, what: str) -> int:
    """
    @return: C{result} when it is not a negative errno.
    @raise OSError: it is, with C{what} and the error's name in the message.
    """
    if result < 0:
        code = -result
        raise OSError(code, f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")
    return result


def _buffer(data: bytes, size: int, what: str) -> ctypes.Array[ctypes.c_char]:
    if len(data) != size:
        raise ValueError(f"{what} is {len(data)} bytes; the map's are {size}")
    return ctypes.create_string_buffer(data, size)


class KernelMap:
    """
    One of the program's maps, by its file descriptor.

    @ivar name: its name in the program (C{"to_peer"}).
    @ivar fd: its file descriptor (owned by the L{KernelProgram}).
    @ivar keySize: the size of its keys, in bytes.
    @ivar valueSize: the size of its values (one CPU's, for a per-CPU map).
    @ivar perCPU: whether a value is one per possible CPU.
    """

    def __init__(
        self, name: str, fd: int, keySize: int, valueSize: int, perCPU: bool = False
    ) -> None:
        self.name = name
        self.fd = fd
        self.keySize = keySize
        self.valueSize = valueSize
        self.perCPU = perCPU
        self._lib = _library()
        self._cpus = _check(self._lib.libbpf_num_possible_cpus(), "counting CPUs")

    def __repr__(self) -> str:
        return f"<KernelMap {self.name} fd={self.fd}>"

    def _valueBytes(self) -> int:
        # Per-CPU values come one per possible CPU, each rounded up to 8.
        if self.perCPU:
            return ((self.valueSize + 7) // 8 * 8) * self._cpus
        return self.valueSize

    def update(self, key: bytes, value: bytes) -> None:
        """
        Add or replace the entry for C{key}.

        @raise OSError: the kernel refused (E2BIG when the map is full).
        """
        keyBuffer = _buffer(key, self.keySize, "the key")
        valueBuffer = _buffer(value, self._valueBytes(), "the value")
        _check(
            self._lib.bpf_map_update_elem(self.fd, keyBuffer, valueBuffer, _BPF_ANY),
            f"updating {self.name}",
        )

    def delete(self, key: bytes) -> bool:
        """
        Remove the entry for C{key}.

        @return: whether there was one.
        """
        keyBuffer = _buffer(key, self.keySize, "the key")
        result = self._lib.bpf_map_delete_elem(self.fd, keyBuffer)
        if result == -errno.ENOENT:
            return False
        _check(result, f"deleting from {self.name}")
        return True

    def lookup(self, key: bytes) -> Optional[bytes]:
        """
        @return: the value for C{key} (for a per-CPU map, every CPU's one
            after the other), or L{None} when there is none.
        """
        keyBuffer = _buffer(key, self.keySize, "the key")
        valueBuffer = ctypes.create_string_buffer(self._valueBytes())
        result = self._lib.bpf_map_lookup_elem(self.fd, keyBuffer, valueBuffer)
        if result == -errno.ENOENT:
            return None
        _check(result, f"looking up in {self.name}")
        return valueBuffer.raw

    def keys(self) -> Iterator[bytes]:
        """
        The keys, as the kernel walks them (entries added or removed
        meanwhile may be seen or missed).
        """
        current = None
        following = ctypes.create_string_buffer(self.keySize)
        while True:
            result = self._lib.bpf_map_get_next_key(self.fd, current, following)
            if result == -errno.ENOENT:
                return
            _check(result, f"walking {self.name}")
            key = following.raw
            yield key
            current = ctypes.create_string_buffer(key, self.keySize)

    def items(self) -> Iterator[Tuple[bytes, bytes]]:
        """
        The entries: each key with its value (those deleted while walking
        are left out).
        """
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def perCPUTotal(self, key: bytes) -> int:
        """
        @return: the sum over CPUs of a per-CPU map's unsigned 64-bit value
            at C{key}.
        """
        value = self.lookup(key) or b""
        step = (self.valueSize + 7) // 8 * 8
        return sum(
            int.from_bytes(value[offset : offset + 8], sys.byteorder)
            for offset in range(0, len(value), step)
        )


class KernelProgram:
    """
    The loaded program, its maps, and the interfaces it is attached to.

    @ivar fd: the TC program's file descriptor (the default: L{attach}).
    @ivar xdpFD: the XDP program's (L{attachXDP}), sharing the maps.
    @ivar maps: its maps by name: C{"to_peer"}, C{"to_client"}, C{"stats"}.
    @ivar testMode: whether it was loaded for L{testRun} only (it then
        returns L{TC_ACT_REDIRECT} with the rewritten packet instead of
        routing and redirecting it).
    """

    def __init__(
        self, lib: ctypes.CDLL, obj: int, fd: int, maps: Dict[str, KernelMap], xdpFD: int = -1
    ) -> None:
        self._lib = lib
        self._obj: Optional[int] = obj
        self.fd = fd
        self.xdpFD = xdpFD
        self.maps = maps
        self.testMode = False
        # ifindex -> (options to detach with, whether we created clsact)
        # The tcx link of each interface: the kernel detaches the program
        # when the link's last descriptor closes, so a relay that dies,
        # even by SIGKILL, leaves no program (and no stale entries) behind.
        self._attached: Dict[int, int] = {}
        # ifindex -> the XDP mode of the XDP links among them.
        self._xdpModes: Dict[int, str] = {}

    @classmethod
    def load(cls, path: str = OBJECT_PATH, testMode: bool = False) -> KernelProgram:
        """
        Load the programs (TC and XDP, one object, shared maps) into the
        kernel.

        @param path: the compiled object.
        @param testMode: for L{testRun}: rewrite, but do not route or send.
        @raise OffloadUnavailable: no libbpf, no object, no privilege, or
            the kernel refused the program (the verifier's first words).
        """
        if not os.path.exists(path):
            raise OffloadUnavailable(f"{path} is missing: build it with `make offload`")
        lib = _library()
        _drainLog()
        ctypes.set_errno(0)
        obj = lib.bpf_object__open_file(os.fsencode(path), None)
        if not obj:
            code = ctypes.get_errno() or errno.EINVAL
            raise OffloadUnavailable(
                f"cannot open {path}: {os.strerror(code)}{_firstLine(_drainLog())}"
            )
        try:
            if testMode:
                _setTestMode(lib, obj)
            result = lib.bpf_object__load(obj)
            if result < 0:
                log = _drainLog()
                if -result == errno.EPERM:
                    raise OffloadUnavailable(
                        "loading the kernel program is not permitted"
                        " (needs root, or CAP_BPF and CAP_NET_ADMIN)"
                    )
                raise OffloadUnavailable(
                    f"the kernel refused the program: {os.strerror(-result)}{_firstLine(log)}"
                )
            program = lib.bpf_object__find_program_by_name(obj, PROGRAM_NAME.encode())
            xdpProgram = lib.bpf_object__find_program_by_name(obj, XDP_PROGRAM_NAME.encode())
            for name, found in [(PROGRAM_NAME, program), (XDP_PROGRAM_NAME, xdpProgram)]:
                if not found:
                    raise OffloadUnavailable(f"{path} has no program {name}")
            maps: Dict[str, KernelMap] = {}
            current = lib.bpf_object__next_map(obj, None)
            while current:
                name = lib.bpf_map__name(current).decode()
                if name in MAP_NAMES:
                    maps[name] = KernelMap(
                        name,
                        lib.bpf_map__fd(current),
                        lib.bpf_map__key_size(current),
                        lib.bpf_map__value_size(current),
                        perCPU=name == "stats",
                    )
                current = lib.bpf_object__next_map(obj, current)
            missing = set(MAP_NAMES) - set(maps)
            if missing:
                raise OffloadUnavailable(f"{path} lacks the maps {sorted(missing)}")
        except BaseException:
            lib.bpf_object__close(obj)
            raise
        loaded = cls(lib, obj, lib.bpf_program__fd(program), maps, lib.bpf_program__fd(xdpProgram))
        loaded.testMode = testMode
        return loaded

    def statsTotals(self) -> Dict[str, int]:
        """
        @return: each of L{STATS} summed over the CPUs.
        """
        stats = self.maps["stats"]
        return {
            name: stats.perCPUTotal(index.to_bytes(4, sys.byteorder))
            for index, name in enumerate(STATS)
        }

    def attach(self, ifindex: int) -> None:
        """
        Run the program on what C{ifindex} receives, after the programs
        already there (a tcx link at ingress, Linux 6.6 and later; no qdisc).

        @raise OSError: the kernel refused (C{EINVAL} from a kernel without
            tcx).
        """
        if ifindex in self._attached:
            return
        link = self._lib.bpf_link_create(self.fd, ifindex, _BPF_TCX_INGRESS, None)
        self._attached[ifindex] = _check(link, f"attaching to interface {ifindex} (tcx)")

    def attachXDP(self, ifindex: int, mode: Optional[str] = None) -> str:
        """
        Run the XDP program on what C{ifindex} receives, with a bpf link
        (which the kernel removes when its last descriptor closes, as the
        tcx links).  An interface has one XDP program: another relay's (a
        worker's) there already is refused.

        @param mode: L{XDP_DRIVER} or L{XDP_GENERIC}; by default the
            driver's where it has XDP, else generic.
        @return: the mode it runs in.
        @raise OSError: the kernel refused (C{EBUSY}: the interface has an
            XDP program already).
        """
        if ifindex in self._xdpModes:
            return self._xdpModes[ifindex]
        if ifindex in self._attached:
            raise OSError(errno.EEXIST, f"interface {ifindex} runs the TC program already")
        error: Optional[OSError] = None
        for tried in [mode] if mode is not None else [XDP_DRIVER, XDP_GENERIC]:
            opts = _LinkCreateOpts()
            opts.sz = ctypes.sizeof(_LinkCreateOpts)
            opts.flags = _XDP_FLAGS[tried]
            link = self._lib.bpf_link_create(self.xdpFD, ifindex, _BPF_XDP, ctypes.byref(opts))
            if link >= 0:
                self._attached[ifindex] = link
                self._xdpModes[ifindex] = tried
                return tried
            error = OSError(
                -link,
                f"attaching to interface {ifindex} (xdp, {tried} mode): "
                f"{os.strerror(-link)} ({errno.errorcode.get(-link, -link)})",
            )
            if -link in (errno.EBUSY, errno.EEXIST):
                break
        assert error is not None
        raise error

    @property
    def xdpModes(self) -> Dict[int, str]:
        """
        The interfaces the XDP program runs on, each with its mode
        (L{XDP_DRIVER} or L{XDP_GENERIC}).
        """
        return dict(self._xdpModes)

    def detach(self, ifindex: int) -> None:
        """
        Stop running on C{ifindex}: close its link (tcx or XDP).
        """
        self._xdpModes.pop(ifindex, None)
        link = self._attached.pop(ifindex, None)
        if link is not None:
            os.close(link)

    @property
    def attached(self) -> List[int]:
        """
        The interfaces the program runs on.
        """
        return sorted(self._attached)

    def testRun(self, packet: bytes, xdp: bool = False) -> Tuple[int, bytes]:
        """
        Run the program once on C{packet} (an Ethernet frame) with
        C{BPF_PROG_TEST_RUN}.

        @param xdp: run the XDP program rather than the TC one.

        @return: what it returned and the packet as it left it.
        @raise OSError: the kernel refused the run.
        """
        data = ctypes.create_string_buffer(packet, len(packet))
        out = ctypes.create_string_buffer(len(packet) + 256)
        opts = _TestRunOpts()
        opts.sz = ctypes.sizeof(_TestRunOpts)
        opts.data_in = ctypes.cast(data, ctypes.c_void_p)
        opts.data_size_in = len(packet)
        opts.data_out = ctypes.cast(out, ctypes.c_void_p)
        opts.data_size_out = len(out)
        opts.repeat = 1
        fd = self.xdpFD if xdp else self.fd
        _check(self._lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts)), "test run")
        # retval is a u32; the program returns TC_ACT_UNSPEC (-1) too.
        return ctypes.c_int32(opts.retval).value, out.raw[: opts.data_size_out]

    def close(self) -> None:
        """
        Detach from every interface and unload the program and its maps
        (unless something else holds them).
        """
        for ifindex in list(self._attached):
            self.detach(ifindex)
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None


def _firstLine(log: List[str]) -> str:
    # What the verifier objected to: its log ends with the rejected
    # instruction's error, then "processed N insns"; libbpf frames the log.
    verifier = [
        line.strip()
        for line in log
        if not line.startswith("libbpf:")
        and not line.startswith("processed ")
        and "PROG LOAD LOG" not in line
    ]
    if verifier:
        return f": {verifier[-1]}"
    return f": {log[0].strip()}" if log else ""


def _setTestMode(lib: ctypes.CDLL, obj: int) -> None:
    """
    Set the program's C{test_mode}, the only variable in its C{.rodata}.
    """
    current = lib.bpf_object__next_map(obj, None)
    while current:
        if lib.bpf_map__name(current).decode().endswith(".rodata"):
            size = ctypes.c_size_t()
            if not lib.bpf_map__initial_value(current, ctypes.byref(size)) or size.value != 1:
                raise OffloadUnavailable("the program's .rodata is not its test_mode alone")
            flag = ctypes.create_string_buffer(b"\x01", 1)
            _check(lib.bpf_map__set_initial_value(current, flag, 1), "setting test_mode")
            return
        current = lib.bpf_object__next_map(obj, current)
    raise OffloadUnavailable("the program has no test_mode")
