//! What /proc says about a process under test: CPU time and memory (read
//! with the procfs crate), and the BPF programs it holds, from its fds'
//! fdinfo (procfs does not parse the BPF fields).

use std::{fs, io};

use procfs::process::Process;

fn proc_error(e: procfs::ProcError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Sum of the process's threads' on-CPU nanoseconds (their schedstat).
pub fn cpu_ns(pid: u32) -> io::Result<u64> {
    let process = Process::new(pid as i32).map_err(proc_error)?;
    let mut total = 0;
    for task in process.tasks().map_err(proc_error)? {
        // A thread that exited between the listing and the read ran no more.
        let Ok(task) = task else { continue };
        if let Ok(stat) = task.schedstat() {
            total += stat.sum_exec_runtime;
        }
    }
    Ok(total)
}

/// Which memory figure of /proc/PID/status.
#[derive(Clone, Copy, Debug)]
pub enum Memory {
    /// Resident set size now (VmRSS).
    Rss,
    /// Peak resident set size (VmHWM).
    PeakRss,
}

/// `which` of the process, in kB as the kernel gives it.
pub fn memory_kb(pid: u32, which: Memory) -> io::Result<u64> {
    let status = Process::new(pid as i32)
        .and_then(|p| p.status())
        .map_err(proc_error)?;
    let value = match which {
        Memory::Rss => status.vmrss,
        Memory::PeakRss => status.vmhwm,
    };
    value.ok_or_else(|| io::Error::other(format!("no {which:?} in /proc/{pid}/status")))
}

/// A BPF program the process holds an fd of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldProgram {
    pub id: u32,
    /// Run time and runs so far (counted only while
    /// `kernel.bpf_stats_enabled` is 1); only a program's own fd has them,
    /// not a link to it.
    pub run_time_ns: Option<u64>,
    pub run_cnt: Option<u64>,
}

/// The BPF programs the process holds (one entry per fd), from fdinfo:
/// unlike a before/after diff of the host's programs, other processes
/// loading programs meanwhile cannot confuse it.
pub fn held_programs(pid: u32) -> io::Result<Vec<HeldProgram>> {
    let mut programs = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        // An fd closed between the listing and the read is no program.
        let Ok(info) = fs::read_to_string(fd?.path()) else {
            continue;
        };
        if let Some(program) = parse_fdinfo(&info) {
            programs.push(program);
        }
    }
    Ok(programs)
}

/// A program fd's fields; `None` for any other fd.
fn parse_fdinfo(info: &str) -> Option<HeldProgram> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(HeldProgram {
        id: u32::try_from(field("prog_id:")?).ok()?,
        run_time_ns: field("run_time_ns:"),
        run_cnt: field("run_cnt:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_program_and_of_a_file() {
        // As /proc/PID/fdinfo shows a program and a link to it on 6.x.
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\t7d3ee40ad3a2c4ab\nmemlock:\t4096\nprog_id:\t86\nrun_time_ns:\t1234\nrun_cnt:\t7\nrecursion_misses:\t0\nverified_insns:\t312\n";
        assert_eq!(
            parse_fdinfo(prog),
            Some(HeldProgram {
                id: 86,
                run_time_ns: Some(1234),
                run_cnt: Some(7)
            })
        );
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t16\nino:\t1057\nlink_type:\ttracing\nlink_id:\t12\nprog_tag:\t7d3ee40ad3a2c4ab\nprog_id:\t86\nattach_type:\t24\n";
        assert_eq!(
            parse_fdinfo(link),
            Some(HeldProgram {
                id: 86,
                run_time_ns: None,
                run_cnt: None
            })
        );
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t25\nino:\t6\n"),
            None
        );
    }

    #[test]
    fn reads_our_own_memory_and_cpu() {
        let pid = std::process::id();
        // Two reads, so no order between them: the process may grow between.
        assert!(memory_kb(pid, Memory::Rss).unwrap() > 0);
        assert!(memory_kb(pid, Memory::PeakRss).unwrap() > 0);
        assert!(cpu_ns(pid).unwrap() > 0);
    }
}
