//! Wiring of one weftd node: settings → lease → data plane → health.
