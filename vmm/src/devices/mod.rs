pub mod virtio;
