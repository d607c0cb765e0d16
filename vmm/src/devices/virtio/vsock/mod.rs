//! virtio-vsock in userspace, host side on unix sockets (in progress).
