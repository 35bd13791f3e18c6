# weft's image: weftd, weftctl and the CNI plugin `weft`, for deploy/kubernetes/ (docs/kubernetes.md#image).
#
#   docker build -t weft:0.1.0 .
#
# The build stage runs scripts/build-release, the release build CI proves (the plugin relinked as a static-pie,
# weftd and weftctl dynamic against glibc), so it must run on the same Debian release as the runtime stage: both
# are bookworm. The base images are arguments so a site can point them at its own mirror.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:12-slim

FROM ${RUST_IMAGE} AS build
# etcd-client's build script compiles etcd's protobuf definitions: protoc and protobuf's well-known types, as in
# scripts/deps. The rust image already has the C toolchain. Versions are the release's (a pinned version of a
# Debian stable package disappears at its next point release).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/build-release \
 && mkdir /out \
 && cp target/release/weftd target/release/weftctl target/release/weft /out/

FROM ${RUNTIME_IMAGE}
# What weftd runs at run time: iptables-save/-restore (legacy and nft variants, both in Debian's iptables
# package: weftd follows whichever the host's rules use) and nft for "EnableNFTables"; ca-certificates for etcd
# over TLS without --etcd-cafile. iproute2 is for `weftctl doctor` and `weftctl docker-opts` in the pod.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/weftd /out/weftctl /out/weft /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/weftd"]
