//! virtio-net over a tap device (in progress).
