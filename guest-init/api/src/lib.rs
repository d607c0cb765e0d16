//! vpod-agent-api
