#!/bin/sh
# Runs the Netty echo server (built by peers/install.sh java-netty) with the JVM's defaults.
# exec: the JVM is this process, so SIGTERM and the /proc readings reach it directly.
here=$(dirname "$0")
cp="$here/build/classes"
for jar in common buffer transport resolver codec codec-http handler; do
    cp="$cp:/usr/share/java/netty-$jar.jar"
done
exec java -cp "$cp" EchoServer "$@"
