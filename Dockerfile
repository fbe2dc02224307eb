# syntax=docker/dockerfile:1

# felhom-agent, the worker daemon of one Proxmox VE host: docker-compose.yml
# builds it, `docker build -t felhom-agent .` builds it alone.

# The exact Go release of go.mod's go line: with a floating tag, an older
# cached image and GOTOOLCHAIN=local would refuse to build.
FROM golang:1.26.8 AS build
WORKDIR /src
# Modules first, so that a source change reuses the download layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/felhom-agent ./cmd/felhom-agent
# The runtime image has no shell to create the state directory with; a named
# volume mounted there copies this directory's owner on first use.
RUN mkdir -p /out/state

# Static binary: no libc, no shell, CA certificates included.
FROM gcr.io/distroless/static-debian13:nonroot
COPY --from=build /out/felhom-agent /usr/local/bin/felhom-agent
COPY --from=build --chown=65532:65532 /out/state /var/lib/felhom-agent
# The nonce store and the provenance ledger: they must outlive the container.
VOLUME ["/var/lib/felhom-agent"]
USER 65532:65532
ENTRYPOINT ["felhom-agent"]
CMD ["run"]
