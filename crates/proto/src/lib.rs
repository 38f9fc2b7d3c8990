//! The generated code of Postern's contracts (`proto/postern/**`), the one place the wire
//! format lives. Every other crate imports the messages and service stubs from here.
//!
//! `FILE_DESCRIPTOR_SET` holds the descriptors of every contract, for server reflection.
//! Every service and client uses [`codec::ProstCodec`]: bytes that do not decode are the
//! sender's mistake (`INVALID_ARGUMENT`), not the server's, and so is a request whose text
//! holds a control character ([`screen`]).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod codec;
pub mod screen;

/// The encoded `FileDescriptorSet` of every Postern contract.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/postern_descriptor.bin"));

/// `postern.tenant.v1`: tenants, clients and API keys.
pub mod tenant {
    /// Version 1 of the tenant contract.
    pub mod v1 {
        tonic::include_proto!("postern.tenant.v1");
    }
}

/// `postern.connections.v1`: the connection registry.
pub mod connections {
    /// Version 1 of the connection registry contract.
    pub mod v1 {
        tonic::include_proto!("postern.connections.v1");
    }
}

/// `postern.authn.v1`: the authenticator (users, logins, tokens).
pub mod authn {
    /// Version 1 of the authenticator contract.
    pub mod v1 {
        tonic::include_proto!("postern.authn.v1");
    }
}

/// `postern.customdb.v1`: the contract a customer implements in front of its own user store.
pub mod customdb {
    /// Version 1 of the custom database contract.
    pub mod v1 {
        tonic::include_proto!("postern.customdb.v1");
    }
}
