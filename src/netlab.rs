//! A network lab for tests: hosts in network namespaces of their own,
//! joined by a delay line in this process that can delay, drop and cut
//! packets per direction. The kernel here has no `netem`, so each host
//! gets a TUN device (`ch0`, address `10.199.0.N/24`) whose packets this
//! process reads, holds for the link's delay, drops with the link's loss,
//! and writes into the destination host's TUN device.
//!
//! Needs root (namespaces, TUN) and iproute2's `ip`. Processes started in
//! a host (`Lab::command`) must be stopped before the lab is dropped: the
//! namespaces are deleted then.

use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

/// What one direction between two hosts does to a packet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Delay, drawn uniformly from this range (ms) for each packet.
    pub delay_ms: (u64, u64),
    /// Chance of dropping a packet (0.0-1.0).
    pub loss: f64,
    /// Every packet dropped.
    pub cut: bool,
}

impl Link {
    /// A clean link.
    pub const CLEAN: Link = Link {
        delay_ms: (0, 0),
        loss: 0.0,
        cut: false,
    };
}

/// Packets forwarded and dropped so far.
#[derive(Debug, Default)]
pub struct Counts {
    /// Delivered.
    pub delivered: AtomicU64,
    /// Dropped by loss or a cut.
    pub dropped: AtomicU64,
}

struct Pending {
    at: Instant,
    seq: u64,
    to: usize,
    packet: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Earliest first in a max-heap.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Shared {
    links: Mutex<Vec<Vec<Link>>>,
    queue: Mutex<BinaryHeap<Pending>>,
    wake: Condvar,
    stop: AtomicBool,
    seq: AtomicU64,
    counts: Counts,
}

/// Hosts in namespaces and the delay line between them.
pub struct Lab {
    names: Vec<String>,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const IFNAME: &str = "ch0";

/// The address of host `i`.
pub fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 199, 0, (i + 1) as u8)
}

fn ip_cmd(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Opens a TUN device named [`IFNAME`] inside namespace `ns`.
fn open_tun(ns: &str) -> Result<OwnedFd> {
    let path = format!("/var/run/netns/{ns}");
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<OwnedFd> {
        let nsf = std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
        // This thread only: it enters the namespace, makes the device there.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot enter namespace {ns}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "cannot open /dev/net/tun: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = [0u8; 40];
        req[..IFNAME.len()].copy_from_slice(IFNAME.as_bytes());
        let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
        req[16..18].copy_from_slice(&flags.to_ne_bytes());
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) } != 0 {
            return Err(format!(
                "TUNSETIFF in {ns}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(fd)
    })
    .join()
    .map_err(|_| "the TUN thread panicked".to_string())?
}

impl Lab {
    /// `n` hosts in namespaces `PREFIX-0` … (made fresh), all links clean.
    pub fn new(prefix: &str, n: usize) -> Result<Lab> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        let shared = Arc::new(Shared {
            links: Mutex::new(vec![vec![Link::CLEAN; n]; n]),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            counts: Counts::default(),
        });
        let mut lab = Lab {
            names: Vec::new(),
            shared,
            threads: Vec::new(),
        };
        let mut fds = Vec::new();
        for (i, ns) in names.iter().enumerate() {
            // Never someone else's: a namespace of that name is an error.
            if std::path::Path::new("/var/run/netns").join(ns).exists() {
                return Err(format!(
                    "network namespace {ns} exists already (left by an earlier run?); remove it with `ip netns del {ns}` or use another prefix"
                ));
            }
            ip_cmd(&["netns", "add", ns])?;
            lab.names.push(ns.clone());
            ip_cmd(&["-n", ns, "link", "set", "lo", "up"])?;
            fds.push(Arc::new(open_tun(ns)?));
            ip_cmd(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", ip(i)),
                "dev",
                IFNAME,
            ])?;
            ip_cmd(&["-n", ns, "link", "set", IFNAME, "up"])?;
        }
        for (from, fd) in fds.iter().enumerate() {
            let (fd, shared) = (fd.clone(), lab.shared.clone());
            lab.threads
                .push(std::thread::spawn(move || read_loop(from, &fd, &shared)));
        }
        let shared = lab.shared.clone();
        lab.threads
            .push(std::thread::spawn(move || deliver_loop(&fds, &shared)));
        Ok(lab)
    }

    /// A command run inside host `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i]]).arg(program);
        c
    }

    /// The prefix that runs a program in host `i` (`ip netns exec NS`).
    pub fn wrap(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.names[i].clone(),
        ]
    }

    /// Sets the link from `from` to `to` (one direction).
    pub fn set(&self, from: usize, to: usize, link: Link) {
        if let Ok(mut l) = self.shared.links.lock() {
            l[from][to] = link;
        }
    }

    /// Sets both directions between every two of `hosts`.
    pub fn set_among(&self, hosts: &[usize], link: Link) {
        for &a in hosts {
            for &b in hosts {
                if a != b {
                    self.set(a, b, link);
                }
            }
        }
    }

    /// Packets delivered and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        let c = &self.shared.counts;
        (
            c.delivered.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in &self.names {
            let _ = ip_cmd(&["netns", "del", ns]);
        }
    }
}

fn read_loop(from: usize, fd: &OwnedFd, s: &Shared) {
    let mut buf = vec![0u8; 65536];
    while !s.stop.load(Ordering::Relaxed) {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
            continue;
        }
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let pkt = &buf[..n as usize];
        // IPv4 only; the destination's last octet names the host.
        if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[16..19] != [10, 199, 0] {
            continue;
        }
        let to = usize::from(pkt[19]).wrapping_sub(1);
        let link = match s.links.lock() {
            Ok(l) if to < l.len() => l[from][to],
            _ => continue,
        };
        if link.cut || (link.loss > 0.0 && rand::random::<f64>() < link.loss) {
            s.counts.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (lo, hi) = link.delay_ms;
        let d = if hi > lo {
            lo + rand::random::<u64>() % (hi - lo + 1)
        } else {
            lo
        };
        let item = Pending {
            at: Instant::now() + Duration::from_millis(d),
            seq: s.seq.fetch_add(1, Ordering::Relaxed),
            to,
            packet: pkt.to_vec(),
        };
        if let Ok(mut q) = s.queue.lock() {
            q.push(item);
        }
        s.wake.notify_one();
    }
}

fn deliver_loop(fds: &[Arc<OwnedFd>], s: &Shared) {
    let Ok(mut q) = s.queue.lock() else {
        return;
    };
    while !s.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = match q.peek() {
            Some(p) if p.at <= now => {
                let p = q.pop().expect("peeked");
                let fd = fds[p.to].as_raw_fd();
                let _ = unsafe { libc::write(fd, p.packet.as_ptr().cast(), p.packet.len()) };
                s.counts.delivered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Some(p) => p.at - now,
            None => Duration::from_millis(100),
        };
        q = match s.wake.wait_timeout(q, wait) {
            Ok((g, _)) => g,
            Err(_) => return,
        };
    }
}
