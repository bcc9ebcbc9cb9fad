# skoala-agent image, carrying helm. Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t skoala-agent .
#
# Stage 1 builds a release binary; stage 2 fetches the pinned, checksum-verified helm with the
# project's own installer; stage 3 is distroless, unprivileged, read-only-root friendly (helm's
# cache and config go to $HOME=/tmp, an emptyDir in the chart).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p skoala-agent --bin skoala-agent

FROM python:3.11-slim-bookworm AS tools
WORKDIR /src
COPY scripts/install-tools.sh scripts/install-tools.sh
RUN ./scripts/install-tools.sh

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/skoala-agent /usr/local/bin/skoala-agent
COPY --from=tools /src/.tools/bin/helm /usr/local/bin/helm
ENV HOME=/tmp
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/skoala-agent"]
