//! weft's CNI plugin, and `subnet.env`: the whole contract between weftd and the plugin.

pub mod subnet_file;
