//! `facts/`: what a node is, gathered on the host before any sandbox, so
//! a noop run (loopback-only network namespace) renders exactly what a
//! live run does. Templates and scripts read them as parameters
//! (`disco param get facts/primary_ipv4`) instead of probing the system;
//! `disco facts [--json]` prints them.
//!
//! Gathered: hostname, fqdn, domain; the OS of ROOT (`etc/os-release`:
//! id, version, codename); architecture, kernel, CPU count, memory; every
//! interface's addresses and MAC; the default route and the primary
//! address (the first IPv4 of the default route's interface);
//! virtualization.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::params::{Key, ParamTree};

/// The most a fact source (`os-release`, a file of `/proc` or `/sys`) may
/// hold.
pub const MAX_FACT_SOURCE: u64 = 4 << 20;

/// The facts as `key → value` (keys below `facts/`; lists one per line).
/// ROOT's `os-release` is untrusted: read inside ROOT, a regular file of
/// at most [`MAX_FACT_SOURCE`]; anything else fails, naming it.
pub fn gather(root: &Path) -> Result<BTreeMap<String, String>> {
    let mut f = BTreeMap::new();
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fqdn = fqdn(&host);
    f.insert(
        "domain".into(),
        fqdn.split_once('.')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default(),
    );
    f.insert("fqdn".into(), fqdn);
    f.insert(
        "hostname".into(),
        host.split('.').next().unwrap_or("").to_string(),
    );
    let os = os_release(root)?;
    for (key, field) in [
        ("os_id", "ID"),
        ("os_version", "VERSION_ID"),
        ("os_codename", "VERSION_CODENAME"),
    ] {
        let v = os
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        f.insert(key.into(), v);
    }
    let uname = nix::sys::utsname::uname().ok();
    f.insert(
        "architecture".into(),
        uname
            .as_ref()
            .map(|u| u.machine().to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    f.insert(
        "kernel".into(),
        uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    f.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
    );
    let mem_kib = host_file("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    f.insert("memory_mb".into(), (mem_kib / 1024).to_string());
    interfaces(&mut f);
    f.insert("virtualization".into(), virtualization());
    Ok(f)
}

/// ROOT's `etc/os-release`, else `usr/lib/os-release` (when the first is
/// absent), resolved inside ROOT ([`crate::fsutil::read_in_root`]);
/// empty when neither exists.
fn os_release(root: &Path) -> Result<String> {
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        let shown = format!("{}/{rel}", root.display());
        let shown = shown.replace("//", "/");
        if let Some(b) = crate::fsutil::read_in_root(root, Path::new(rel), &shown, MAX_FACT_SOURCE)?
        {
            return Ok(String::from_utf8_lossy(&b).into_owned());
        }
    }
    Ok(String::new())
}

/// A kernel file of the host (`/proc`, `/sys`), read as any fact source
/// is: no symlink at the end, never blocking, at most [`MAX_FACT_SOURCE`];
/// empty when it cannot be.
fn host_file(path: &str) -> String {
    crate::fsutil::read_small(Path::new(path), path, MAX_FACT_SOURCE)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The facts as a parameter tree under `facts/`, values ending in a newline
/// as parameter files do.
pub fn as_params(facts: &BTreeMap<String, String>) -> ParamTree {
    let mut t = ParamTree::default();
    for (k, v) in facts {
        if let Ok(key) = Key::parse(&format!("facts/{k}")) {
            t.insert(&key, format!("{v}\n").into_bytes());
        }
    }
    t
}

fn fqdn(host: &str) -> String {
    if host.contains('.') {
        return host.to_string();
    }
    // The canonical name the resolver gives (as `hostname -f`).
    let Ok(c) = std::ffi::CString::new(host) else {
        return host.to_string();
    };
    // SAFETY: getaddrinfo with a zeroed hints struct; the result is freed.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_flags = libc::AI_CANONNAME;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        if libc::getaddrinfo(c.as_ptr(), std::ptr::null(), &hints, &mut res) != 0 || res.is_null() {
            return host.to_string();
        }
        let name = if (*res).ai_canonname.is_null() {
            host.to_string()
        } else {
            std::ffi::CStr::from_ptr((*res).ai_canonname)
                .to_string_lossy()
                .into_owned()
        };
        libc::freeaddrinfo(res);
        name
    }
}

/// `interfaces/IF/{ipv4,ipv6,mac}`, the default route and the primary address.
fn interfaces(f: &mut BTreeMap<String, String>) {
    let mut v4: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut v6: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(s) = addr.as_sockaddr_in() {
                v4.entry(a.interface_name.clone())
                    .or_default()
                    .push(s.ip().to_string());
            } else if let Some(s) = addr.as_sockaddr_in6() {
                v6.entry(a.interface_name.clone())
                    .or_default()
                    .push(s.ip().to_string());
            }
        }
    }
    let names: std::collections::BTreeSet<String> = v4.keys().chain(v6.keys()).cloned().collect();
    for name in &names {
        if crate::names::Name::parse(name, "interface").is_err() {
            continue;
        }
        let base = format!("interfaces/{name}");
        if let Some(a) = v4.get(name) {
            f.insert(format!("{base}/ipv4"), a.join("\n"));
        }
        if let Some(a) = v6.get(name) {
            f.insert(format!("{base}/ipv6"), a.join("\n"));
        }
        let mac = host_file(&format!("/sys/class/net/{name}/address"));
        if !mac.is_empty() {
            f.insert(format!("{base}/mac"), mac.trim().to_string());
        }
    }
    // /proc/net/route: the destination 00000000 is the default route.
    let route = host_file("/proc/net/route");
    let default = route.lines().skip(1).find_map(|l| {
        let c: Vec<&str> = l.split_whitespace().collect();
        (c.get(1) == Some(&"00000000")).then(|| (c[0].to_string(), c.get(2).copied().unwrap_or("")))
    });
    let (iface, gateway) = match default {
        Some((i, g)) => {
            let gw = u32::from_str_radix(g, 16)
                .map(|n| std::net::Ipv4Addr::from(n.to_le_bytes()).to_string())
                .unwrap_or_default();
            (i, gw)
        }
        None => (String::new(), String::new()),
    };
    let primary = v4
        .get(&iface)
        .and_then(|a| a.first().cloned())
        .or_else(|| {
            v4.iter()
                .filter(|(n, _)| n.as_str() != "lo")
                .find_map(|(_, a)| a.first().cloned())
        })
        .unwrap_or_default();
    f.insert("default_gateway".into(), gateway);
    f.insert("primary_interface".into(), iface);
    f.insert("primary_ipv4".into(), primary);
}

/// `none`, `container`, or the hypervisor's name when it says it.
fn virtualization() -> String {
    if Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists() {
        return "container".into();
    }
    let dmi = |f: &str| host_file(&format!("/sys/class/dmi/id/{f}"));
    let who = format!("{} {}", dmi("sys_vendor"), dmi("product_name")).to_lowercase();
    for (needle, name) in [
        ("kvm", "kvm"),
        ("qemu", "qemu"),
        ("vmware", "vmware"),
        ("virtualbox", "virtualbox"),
        ("xen", "xen"),
        ("amazon", "amazon"),
        ("google", "google"),
        ("microsoft", "hyperv"),
        ("firecracker", "firecracker"),
    ] {
        if who.contains(needle) {
            return name.into();
        }
    }
    let cpu = host_file("/proc/cpuinfo");
    if cpu
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == "hypervisor"))
    {
        return "vm".into();
    }
    "none".into()
}
