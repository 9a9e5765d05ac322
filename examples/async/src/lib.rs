//! Nothing but a home for the async examples in `examples/` (hyper on
//! greenstack, HTTPS with rustls, reqwest from coroutines); see the
//! workspace README's "Async code".
