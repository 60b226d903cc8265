//! The default seccomp profile of every sandbox.
//!
//! A deny list over an allow-by-default policy: the system calls below reach
//! kernel surfaces a sandboxed program has no business with (modules,
//! keyrings, kexec, BPF, namespaces, clocks, accounting, tracing other
//! processes) and fail with `EPERM`. Most are also guarded by capabilities a
//! sandbox does not hold; seccomp is the second fence. `clone3` answers
//! `ENOSYS` so libc falls back to `clone`, whose namespace flags can be
//! inspected (user namespaces are refused).

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// System calls refused with `EPERM`.
pub const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
/// `CLONE_NEWUSER` from `<linux/sched.h>`.
const CLONE_NEWUSER: u64 = 0x1000_0000;

fn rule(names: &[&str], errno: u32) -> LinuxSyscall {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .build()
        .expect("a syscall rule with names and action is complete")
}

/// The profile.
pub fn default_profile() -> LinuxSeccomp {
    let clone_newuser = LinuxSyscallBuilder::default()
        .names(vec!["clone".to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .args(vec![
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(CLONE_NEWUSER)
                .value_two(CLONE_NEWUSER)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
                .expect("a seccomp argument with index, values and op is complete"),
        ])
        .build()
        .expect("a syscall rule with names, action and args is complete");
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![
            rule(DENIED, EPERM),
            rule(&["clone3"], ENOSYS),
            clone_newuser,
        ])
        .build()
        .expect("a seccomp profile with default action and syscalls is complete")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_serialises_like_runc_expects() {
        let json = serde_json::to_value(default_profile()).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        let rules = json["syscalls"].as_array().unwrap();
        assert!(
            rules[0]["names"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "kexec_load")
        );
        assert_eq!(rules[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(rules[0]["errnoRet"], 1);
        assert_eq!(rules[1]["names"][0], "clone3");
        assert_eq!(rules[2]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
    }
}
