# skoala-coordinator image. Build from the repository root:
#   docker build -f docker/coordinator.Dockerfile -t skoala-coordinator .
#
# Stage 1 builds a release binary; stage 2 is distroless (no shell, no package manager) and runs
# as the unprivileged user 65532, matching the chart's securityContext.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p skoala-coordinator --bin skoala-coordinator

# The coordinator upgrades `skoala` in its own cluster with helm: take the pinned, checksum-
# verified helm from the project's installer.
FROM python:3.11-slim-bookworm AS tools
WORKDIR /src
COPY scripts/install-tools.sh scripts/install-tools.sh
RUN ./scripts/install-tools.sh

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/skoala-coordinator /usr/local/bin/skoala-coordinator
COPY --from=tools /src/.tools/bin/helm /usr/local/bin/helm
USER 65532:65532
EXPOSE 7443 9090
ENTRYPOINT ["/usr/local/bin/skoala-coordinator"]
CMD ["serve", "--data-dir=/data"]
