# tollgate container image: build in a full Rust image, ship the binary alone on a distroless
# base (glibc, CA certificates, no shell), running as a non-root user.
#
#   docker build -t tollgate:0.1.0 .
#   docker run --rm -p 8081:8081 -p 8080:8080 -v "$PWD/examples/config:/etc/tollgate:ro" tollgate:0.1.0
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin tollgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tollgate /tollgate
# Envoy Gateway (and AI Gateway) run the reference service's /bin/ratelimit with no arguments:
# under that name, with none of tollgate's flags or TOLLGATE_* variables, tollgate reads the
# reference's environment (README: "Drop-in for envoyproxy/ratelimit"). A copy, not a link:
# the base image has no shell to make one.
COPY --from=build /src/target/release/tollgate /bin/ratelimit
# gRPC (Envoy) and HTTP admin (health, metrics). Inside a container the admin port listens on
# all interfaces so probes and Prometheus can reach it: restrict it with a NetworkPolicy.
EXPOSE 8081 8080
USER nonroot:nonroot
ENTRYPOINT ["/tollgate"]
CMD ["serve", "--config", "/etc/tollgate", "--grpc-addr", "0.0.0.0:8081", "--http-addr", "0.0.0.0:8080", "--log-format", "json"]
