//! vpod-init
