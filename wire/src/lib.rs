//! wsscale-wire: what wsscale's server and load generator say to each other beyond
//! RFC 6455, defined once for both: [`push`], the payload of a server push (the server
//! encodes it, the generator parses it and measures delivery). No dependencies, no IO.

pub mod push;
