//! Which CPUs a thread may run on. `vgg serve --compute-cpus` keeps the forward passes on cores of
//! their own and the HTTP side (accepting, parsing, refusing, answering) on the others: under
//! overload the server parses and refuses thousands of requests a second, and on a shared core
//! that work preempts the forward passes that the accepted requests wait for. Threads inherit the
//! CPUs of the thread that starts them, so pinning the starting thread before each side starts its
//! threads places both sides.

use std::fmt;
use std::str::FromStr;

use crate::parse::ParseError;

/// A set of CPU numbers, as `taskset -c` and `/sys/devices/system/cpu/online` write them
/// (`0-3,6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet {
    /// Ascending, without repeats.
    cpus: Vec<usize>,
}

/// CPU numbers above this are not accepted (the kernel's `cpu_set_t` holds 1024).
const MAX_CPU: usize = 1023;

impl CpuSet {
    /// The set of these CPUs.
    pub fn new(mut cpus: Vec<usize>) -> Self {
        cpus.sort_unstable();
        cpus.dedup();
        CpuSet { cpus }
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// How many CPUs.
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// Whether it holds no CPU.
    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// The CPUs of `self` that `other` does not hold.
    pub fn without(&self, other: &CpuSet) -> CpuSet {
        CpuSet { cpus: self.cpus.iter().copied().filter(|c| !other.cpus.contains(c)).collect() }
    }
}

impl FromStr for CpuSet {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::new("CPU list", s, "CPU numbers and ranges such as 0-3,6");
        let number = |t: &str| t.trim().parse::<usize>().ok().filter(|&c| c <= MAX_CPU).ok_or_else(err);
        let mut cpus = Vec::new();
        for item in s.split(',') {
            match item.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(err());
                    }
                    cpus.extend(first..=last);
                }
                None => cpus.push(number(item)?),
            }
        }
        Ok(CpuSet::new(cpus))
    }
}

impl fmt::Display for CpuSet {
    /// Ranges where the CPUs are consecutive: `0-3,6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.cpus.len() {
            let mut j = i;
            while j + 1 < self.cpus.len() && self.cpus[j + 1] == self.cpus[j] + 1 {
                j += 1;
            }
            let sep = if i == 0 { "" } else { "," };
            match j > i {
                true => write!(f, "{sep}{}-{}", self.cpus[i], self.cpus[j])?,
                false => write!(f, "{sep}{}", self.cpus[i])?,
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// The CPUs the calling thread may run on.
#[cfg(target_os = "linux")]
pub fn current() -> std::io::Result<CpuSet> {
    // SAFETY: a zeroed cpu_set_t is an empty set; the kernel writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(CpuSet::new((0..=MAX_CPU).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()))
}

/// Restricts the calling thread (and the threads it starts from now on) to `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpus: &CpuSet) -> std::io::Result<()> {
    // SAFETY: as in `current`; every CPU number is at most MAX_CPU, inside the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in &cpus.cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on (not known on this system).
#[cfg(not(target_os = "linux"))]
pub fn current() -> std::io::Result<CpuSet> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "CPU affinity is only set on Linux"))
}

/// Restricts the calling thread to `cpus` (not supported on this system).
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpus: &CpuSet) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "CPU affinity is only set on Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_and_write_as_taskset_does() {
        let set: CpuSet = "6,0-3, 2".parse().unwrap();
        assert_eq!(set.cpus(), &[0, 1, 2, 3, 6]);
        assert_eq!(set.to_string(), "0-3,6");
        assert_eq!("5".parse::<CpuSet>().unwrap().to_string(), "5");
        assert_eq!(CpuSet::new(vec![1, 3, 4, 5, 9]).to_string(), "1,3-5,9");
        for bad in ["", "a", "3-1", "1-", "-2", "0,,1", "2048"] {
            let e = bad.parse::<CpuSet>().unwrap_err();
            assert!(e.to_string().contains("CPU list"), "{bad}: {e}");
        }
        assert_eq!(set.without(&"1,6".parse().unwrap()).cpus(), &[0, 2, 3]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_and_the_threads_it_starts_run_on_the_cpus_given() {
        std::thread::spawn(|| {
            let allowed = current().unwrap();
            let first = CpuSet::new(vec![allowed.cpus()[0]]);
            pin_current_thread(&first).unwrap();
            assert_eq!(current().unwrap(), first);
            let child = std::thread::spawn(current).join().unwrap().unwrap();
            assert_eq!(child, first);
            // Back to every allowed CPU: the set is not only ever narrowed.
            pin_current_thread(&allowed).unwrap();
            assert_eq!(current().unwrap(), allowed);
        })
        .join()
        .unwrap();
    }
}
