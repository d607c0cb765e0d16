//! vpod-testbed
