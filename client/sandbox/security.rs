//! What a process inside the sandbox may do, beyond what it can see: the
//! capability allow-list, `no_new_privs`, the seccomp filter, and the
//! hygiene of the sandbox's init before it runs anything (no descriptor of
//! the host, no controlling terminal, not ptrace-able).
//!
//! Applied by the sandbox's init after the root is built and pivoted into,
//! in this order: [`detach`] (new session, stdin `/dev/null`, every fd but
//! 0/1/2 and the result pipe closed, not dumpable), [`restrict`]
//! (capabilities cut to [`ALLOWED_CAPS`] in every set, bounding and
//! ambient included; `no_new_privs`; the seccomp filter). Everything the
//! init then starts inherits all of it and cannot undo it.
//!
//! The filter denies with `EPERM` the calls that reach outside a mount
//! namespace or the machine's files ([`DENIED`], io_uring among them),
//! `ioctl(TIOCSTI)` and `ioctl(TIOCLINUX)`, `clone`/`unshare` of a user
//! namespace, and `personality` with any persona but Docker's
//! ([`PERSONAS`]); `socket`/`socketpair` of `AF_VSOCK` — and in noop of
//! any family but [`NOOP_FAMILIES`] — get `EAFNOSUPPORT`; `clone3` gets
//! `ENOSYS` (its flags are behind a pointer a filter cannot read; libc
//! falls back to `clone`); on x86_64 every x32 call gets `ENOSYS`, and a
//! call of another architecture (i386 `int 0x80`) kills the process.
//!
//! Also here: no core dumps (`RLIMIT_CORE` 0, hard), and in noop the
//! capabilities of [`NOOP_DROPPED`] go too.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use anyhow::{anyhow, Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Capabilities a script that edits files as root needs; every other one
/// is dropped from every set. The same list as Docker's default less
/// `CAP_MKNOD` (a device node would open the host's disks: the sandbox's
/// own `/dev` is the only place devices work).
pub const ALLOWED_CAPS: &[caps::Capability] = {
    use caps::Capability::*;
    &[
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_FOWNER,
        CAP_FSETID,
        CAP_KILL,
        CAP_SETUID,
        CAP_SETGID,
        CAP_SETPCAP,
        CAP_SETFCAP,
        CAP_NET_BIND_SERVICE,
        CAP_NET_RAW,
        CAP_SYS_CHROOT,
        CAP_AUDIT_WRITE,
    ]
};

/// Capabilities a noop sandbox drops as well, whatever its network:
/// `CAP_NET_RAW` (an `AF_PACKET` socket sees every frame of its network
/// namespace, the host's with `noop_network = "host"`) and
/// `CAP_AUDIT_WRITE` (the kernel's audit log is the host's: a forged
/// `AUDIT_USER_LOGIN` would land there). Live keeps them (`ping` in a
/// postinst, `login`-style tools writing audit records, as on the host).
pub const NOOP_DROPPED: &[caps::Capability] = &[
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// `personality()` arguments allowed, Docker's default profile's
/// (moby `profiles/seccomp/default.json`): `PER_LINUX` (0), `PER_LINUX32`
/// (8), `UNAME26` (0x20000), `PER_LINUX32|UNAME26` (0x20008) and the query
/// (0xffffffff). Any other persona (`ADDR_NO_RANDOMIZE`,
/// `READ_IMPLIES_EXEC`, …) gets `EPERM`.
pub const PERSONAS: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Address families a noop sandbox may open a socket of: the ones its own
/// network namespace isolates and a script plausibly uses (`AF_UNIX`,
/// `AF_INET`, `AF_INET6`, `AF_NETLINK`, `AF_PACKET` — which needs the
/// dropped `CAP_NET_RAW` anyway), and `AF_ALG` (the kernel's crypto on the
/// caller's own data, reaching no shared state; cryptsetup and libkcapi
/// use it). Every other family (`AF_VSOCK`, `AF_BLUETOOTH`, `AF_NFC`,
/// `AF_RDS`, `AF_TIPC`, `AF_CAN`, `AF_KEY`, `AF_XDP`, `AF_ATM*`, …) is
/// refused with `EAFNOSUPPORT`, what a kernel without the family says.
pub const NOOP_FAMILIES: &[u64] = &[
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
    libc::AF_PACKET as u64,
    libc::AF_ALG as u64,
];

/// System calls denied outright (`EPERM`).
pub const DENIED: &[&str] = &[
    // io_uring's own operations (OPENAT, CONNECT…) are not system calls:
    // the filter would never see them. EPERM, as Docker's profile and the
    // kernel's own `io_uring_disabled` sysctl answer; every user of it
    // (liburing, libuv, tokio) falls back to plain calls on any error.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // File handles reach any inode of a filesystem, outside the pivot_root.
    "open_by_handle_at",
    "name_to_handle_at",
    // The kernel keyrings are the host's.
    "keyctl",
    "add_key",
    "request_key",
    // Mounts: the sandbox's are fixed before anything runs.
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "mount_setattr",
    // The kernel itself.
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "iopl",
    "ioperm",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    // Other processes' memory and namespaces.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "setns",
];

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
const CLONE_NEWUSER: u64 = 0x1000_0000;
/// x32 system call numbers have this bit set (x86_64 only).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Makes the calling process (the sandbox's init) a clean parent: a new
/// session without a controlling terminal, `/dev/null` as stdin, only
/// fds 0, 1, 2, `keep` (moved to 3) and `extra` (moved to 4…) open, and
/// not dumpable (so nothing inside can
/// open its `/proc/1/fd` or `/proc/1/mem`). With `terminal` (the
/// interactive `disco shell`, where nothing from a server runs) the
/// session and stdin stay the user's.
pub fn detach(keep: RawFd, extra: &[RawFd], terminal: bool) -> Result<(RawFd, Vec<RawFd>)> {
    if !terminal {
        nix::unistd::setsid().context("setsid")?;
        let null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .context("cannot open /dev/null")?;
        nix::unistd::dup2(null, 0).context("dup2 /dev/null")?;
        let _ = nix::unistd::close(null);
    }
    // Out of the way first (above every number they move to), then the
    // result pipe to fd 3 and the `extra` ones (the cgroup's counters) to
    // 4…, all close-on-exec; everything above goes.
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let high = 3 + extra.len() as RawFd + 1;
    let mut moved = Vec::with_capacity(extra.len() + 1);
    for fd in std::iter::once(keep).chain(extra.iter().copied()) {
        moved.push(
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(high)).context("dup")?,
        );
    }
    let mut kept = Vec::with_capacity(moved.len());
    for (i, fd) in moved.into_iter().enumerate() {
        let to = 3 + i as RawFd;
        kept.push(nix::unistd::dup3(fd, to, cloexec).context("dup3")?);
    }
    // SAFETY: plain syscall on fd numbers; nothing in this process uses
    // the descriptors it closes (the init is single-threaded).
    let from = 3 + kept.len() as u32;
    let r = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
    if r != 0 {
        // Kernels before 5.9: close them one by one.
        for fd in from as RawFd..1024 {
            let _ = nix::unistd::close(fd);
        }
    }
    nix::sys::prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE)")?;
    let result = kept.remove(0);
    Ok((result, kept))
}

/// Drops every capability not in [`ALLOWED_CAPS`] (in `noop`, those of
/// [`NOOP_DROPPED`] too) from every set, forbids core dumps
/// (`RLIMIT_CORE` 0, soft and hard: a crashing script leaves no core in
/// its layer, and without `CAP_SYS_RESOURCE` nothing can raise it),
/// sets `no_new_privs` and installs the seccomp filter.
pub fn restrict(noop: bool) -> Result<()> {
    drop_capabilities(noop)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .context("setrlimit(RLIMIT_CORE, 0)")?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
    }
    for program in filters(noop)? {
        seccompiler::apply_filter(&program).map_err(|e| anyhow!("cannot install seccomp: {e}"))?;
    }
    Ok(())
}

/// Whether a sandbox keeps `cap`.
fn kept(cap: &caps::Capability, noop: bool) -> bool {
    ALLOWED_CAPS.contains(cap) && !(noop && NOOP_DROPPED.contains(cap))
}

fn drop_capabilities(noop: bool) -> Result<()> {
    use caps::CapSet;
    let supported = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
    for cap in supported.iter().filter(|c| !kept(c, noop)) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| anyhow!("cannot drop {cap} from the bounding set: {e}"))?;
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| anyhow!("cannot clear ambient capabilities: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| anyhow!("cannot clear inheritable capabilities: {e}"))?;
    // Effective must stay within permitted: narrow it first.
    for set in [CapSet::Effective, CapSet::Permitted] {
        let mut keep =
            caps::read(None, set).map_err(|e| anyhow!("cannot read capabilities: {e}"))?;
        keep.retain(|c| kept(c, noop));
        caps::set(None, set, &keep).map_err(|e| anyhow!("cannot drop capabilities: {e}"))?;
    }
    Ok(())
}

fn arch() -> Result<seccompiler::TargetArch> {
    std::env::consts::ARCH.try_into().map_err(|_| {
        anyhow!(
            "seccomp: this architecture ({}) is not supported",
            std::env::consts::ARCH
        )
    })
}

fn syscall_number(name: &str) -> Result<i64> {
    let nr = match name {
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "move_mount" => libc::SYS_move_mount,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "open_tree" => libc::SYS_open_tree,
        "mount_setattr" => libc::SYS_mount_setattr,
        "kexec_load" => libc::SYS_kexec_load,
        #[cfg(target_arch = "x86_64")]
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "bpf" => libc::SYS_bpf,
        "perf_event_open" => libc::SYS_perf_event_open,
        "userfaultfd" => libc::SYS_userfaultfd,
        #[cfg(target_arch = "x86_64")]
        "iopl" => libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => libc::SYS_ioperm,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "reboot" => libc::SYS_reboot,
        "acct" => libc::SYS_acct,
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "setns" => libc::SYS_setns,
        _ => {
            return Err(anyhow!(
                "seccomp: no number for {name} on this architecture"
            ))
        }
    };
    Ok(nr)
}

fn on_arg(index: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> Result<SeccompRule> {
    let cond = SeccompCondition::new(index, len, op, value).map_err(|e| anyhow!("seccomp: {e}"))?;
    SeccompRule::new(vec![cond]).map_err(|e| anyhow!("seccomp: {e}"))
}

/// One rule matching when argument `index` (32 bits) is none of `values`.
fn none_of(index: u8, values: &[u64]) -> Result<SeccompRule> {
    let conds = values
        .iter()
        .map(|v| SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("seccomp: {e}"))?;
    SeccompRule::new(conds).map_err(|e| anyhow!("seccomp: {e}"))
}

/// The rules of the socket families refused (`EAFNOSUPPORT`): `AF_VSOCK`
/// (the hypervisor's and host's port space, which no namespace isolates)
/// always; in noop every family but [`NOOP_FAMILIES`].
fn family_rules(noop: bool) -> Result<Vec<SeccompRule>> {
    use SeccompCmpArgLen::Dword;
    if noop {
        Ok(vec![none_of(0, NOOP_FAMILIES)?])
    } else {
        Ok(vec![on_arg(
            0,
            Dword,
            SeccompCmpOp::Eq,
            libc::AF_VSOCK as u64,
        )?])
    }
}

/// The BPF programs, in the order they are installed.
pub fn filters(noop: bool) -> Result<Vec<BpfProgram>> {
    let target = arch()?;
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in DENIED {
        match syscall_number(name) {
            Ok(nr) => {
                eperm.insert(nr, Vec::new());
            }
            // Calls this architecture does not have (iopl on arm64).
            Err(_) if cfg!(not(target_arch = "x86_64")) => {}
            Err(e) => return Err(e),
        }
    }
    use SeccompCmpArgLen::{Dword, Qword};
    // ioctl's request is an unsigned int: compare the low 32 bits only, so
    // garbage in the high half cannot slip past.
    eperm.insert(
        libc::SYS_ioctl,
        vec![
            on_arg(1, Dword, SeccompCmpOp::Eq, TIOCSTI)?,
            on_arg(1, Dword, SeccompCmpOp::Eq, TIOCLINUX)?,
        ],
    );
    let newuser = SeccompCmpOp::MaskedEq(CLONE_NEWUSER);
    eperm.insert(
        libc::SYS_unshare,
        vec![on_arg(0, Qword, newuser.clone(), CLONE_NEWUSER)?],
    );
    eperm.insert(
        libc::SYS_clone,
        vec![on_arg(0, Qword, newuser, CLONE_NEWUSER)?],
    );
    // personality takes an unsigned int: the low 32 bits only.
    eperm.insert(libc::SYS_personality, vec![none_of(0, PERSONAS)?]);
    let deny = SeccompFilter::new(
        eperm,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target,
    )
    .map_err(|e| anyhow!("seccomp: {e}"))?;
    let mut enosys: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    enosys.insert(libc::SYS_clone3, Vec::new());
    let fallback = SeccompFilter::new(
        enosys,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target,
    )
    .map_err(|e| anyhow!("seccomp: {e}"))?;
    let mut families: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    families.insert(libc::SYS_socket, family_rules(noop)?);
    families.insert(libc::SYS_socketpair, family_rules(noop)?);
    let no_family = SeccompFilter::new(
        families,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        target,
    )
    .map_err(|e| anyhow!("seccomp: {e}"))?;
    let mut programs = Vec::new();
    for f in [deny, fallback, no_family] {
        let mut p: BpfProgram = f.try_into().map_err(|e| anyhow!("seccomp: {e}"))?;
        if cfg!(target_arch = "x86_64") {
            guard_x32(&mut p);
        }
        programs.push(p);
    }
    Ok(programs)
}

/// Inserts, right after seccompiler's architecture check (three
/// instructions: load arch, jump if equal, kill), a refusal of every x32
/// call: they carry the x86_64 audit arch but other numbers, so a
/// deny-list by number alone would let `open_by_handle_at | 0x40000000`
/// through on kernels with x32 enabled.
fn guard_x32(program: &mut BpfProgram) {
    use seccompiler::sock_filter;
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JGE | BPF_K, BPF_RET | BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    let guard = [
        // A = seccomp_data.nr (offset 0)
        sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ];
    let at = 3.min(program.len());
    program.splice(at..at, guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denied_call_has_a_number_and_the_filters_build() {
        for name in DENIED {
            syscall_number(name).unwrap();
        }
        for noop in [false, true] {
            check_programs(&filters(noop).unwrap());
        }
    }

    fn check_programs(programs: &[BpfProgram]) {
        assert_eq!(programs.len(), 3);
        for p in programs {
            // Architecture check first (kill on mismatch), then the x32 guard.
            assert_eq!(p[2].k, libc::SECCOMP_RET_KILL_PROCESS);
            assert_eq!(p[4].k, X32_SYSCALL_BIT);
            assert_eq!(p[5].k, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        }
    }

    #[test]
    fn noop_also_drops_raw_sockets_and_audit_writes() {
        use caps::Capability::*;
        for c in [CAP_NET_RAW, CAP_AUDIT_WRITE] {
            assert!(kept(&c, false), "{c}");
            assert!(!kept(&c, true), "{c}");
        }
        assert!(kept(&CAP_CHOWN, true) && !kept(&CAP_SYS_ADMIN, false));
        // Docker's personas, the query included; nothing else.
        assert!(PERSONAS.contains(&0xffff_ffff) && !PERSONAS.contains(&0x0040000));
        assert!(!NOOP_FAMILIES.contains(&(libc::AF_VSOCK as u64)));
    }

    #[test]
    fn allow_list_keeps_what_file_editing_needs_and_nothing_that_reaches_out() {
        use caps::Capability::*;
        for c in [CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_SETUID] {
            assert!(ALLOWED_CAPS.contains(&c));
        }
        for c in [
            CAP_SYS_ADMIN,
            CAP_DAC_READ_SEARCH,
            CAP_SYS_PTRACE,
            CAP_MKNOD,
            CAP_SYS_MODULE,
            CAP_SYS_RAWIO,
            CAP_NET_ADMIN,
        ] {
            assert!(!ALLOWED_CAPS.contains(&c), "{c}");
        }
    }
}
