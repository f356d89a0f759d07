//! azsim: the CLI's library half, so integration tests can call in.
