# The wsscale image: one static-enough binary on a slim Debian.
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wsscale

FROM debian:bookworm-slim
COPY --from=build /src/target/release/wsscale /usr/local/bin/wsscale
EXPOSE 8080 9100 9200
ENTRYPOINT ["wsscale"]
CMD ["serve"]
