//! Userspace ABI structs the programs read from the traced process's memory.
//! Their layout is the x86_64/arm64 Linux syscall ABI, fixed forever.

#[repr(C)]
#[derive(Clone, Copy)]
pub struct iovec {
    pub iov_base: u64,
    pub iov_len: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct user_msghdr {
    pub msg_name: u64,
    pub msg_namelen: u32,
    pub _pad: u32,
    pub msg_iov: u64,
    pub msg_iovlen: u64,
    pub msg_control: u64,
    pub msg_controllen: u64,
    pub msg_flags: u32,
    pub _pad2: u32,
}
