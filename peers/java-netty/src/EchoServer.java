/*
 * Echo server in the shape of Netty's own WebSocket server example
 * (io.netty.example.http.websocketx.server: WebSocketServer, WebSocketServerInitializer,
 * WebSocketFrameHandler), with Netty's defaults: NIO transport, a boss group of one thread and a
 * worker group of the default size (2 x cores), the pooled allocator, the example's pipeline.
 *
 * Differences from the example: the WebSocket path is /ws; the frame handler echoes text,
 * binary and continuation frames as they come (the example upper-cases text and rejects
 * binary); the index-page handler is reduced to a 404 for every plain HTTP request; the
 * LoggingHandler on the server channel (one log line per accepted connection) is left out.
 *
 * WebSocketServerProtocolHandler answers pings and the client's Close frame (it writes the
 * Close back, then closes the channel). Port: first argument, else WSSCALE_PORT. SIGTERM:
 * the JVM's default (shutdown hooks run, the process exits).
 *
 * wss://: `--cert FILE --key FILE` (PEM; the key PKCS#8) after the port serve TLS on the same
 * port the way the example's SSL branch does: SslContextBuilder.forServer(cert, key).build()
 * with Netty's defaults (the JDK's SSLEngine, as netty-tcnative is not installed), its
 * newHandler first in the pipeline.
 */

import io.netty.bootstrap.ServerBootstrap;
import io.netty.buffer.ByteBufUtil;
import io.netty.channel.Channel;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelPipeline;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.SimpleChannelInboundHandler;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.socket.SocketChannel;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.handler.codec.http.DefaultFullHttpResponse;
import io.netty.handler.codec.http.FullHttpRequest;
import io.netty.handler.codec.http.FullHttpResponse;
import io.netty.handler.codec.http.HttpObjectAggregator;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.HttpServerCodec;
import io.netty.handler.codec.http.HttpUtil;
import io.netty.handler.codec.http.websocketx.WebSocketFrame;
import io.netty.handler.codec.http.websocketx.WebSocketServerProtocolHandler;
import io.netty.handler.codec.http.websocketx.extensions.compression.WebSocketServerCompressionHandler;
import io.netty.handler.ssl.SslContext;
import io.netty.handler.ssl.SslContextBuilder;
import java.io.File;

public final class EchoServer {

    static final String WEBSOCKET_PATH = "/ws";

    public static void main(String[] args) throws Exception {
        String usage = "usage: EchoServer PORT [--cert FILE --key FILE] (or set WSSCALE_PORT)";
        String port = System.getenv("WSSCALE_PORT");
        String cert = null;
        String key = null;
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--cert") && i + 1 < args.length) {
                cert = args[++i];
            } else if (args[i].equals("--key") && i + 1 < args.length) {
                key = args[++i];
            } else if (i == 0 && !args[i].startsWith("-")) {
                port = args[i];
            } else {
                exit("unexpected argument " + args[i] + "\n" + usage);
            }
        }
        if (port == null) {
            exit(usage);
        }
        if ((cert == null) != (key == null)) {
            exit("--cert and --key go together\n" + usage);
        }

        // The example's SSL branch, with the given files instead of a SelfSignedCertificate.
        final SslContext sslCtx;
        if (cert != null) {
            for (String[] file : new String[][] {{"--cert", cert}, {"--key", key}}) {
                if (!new File(file[1]).canRead()) {
                    exit("java-netty: " + file[0] + " " + file[1] + ": cannot be read");
                }
            }
            try {
                sslCtx = SslContextBuilder.forServer(new File(cert), new File(key)).build();
            } catch (Exception e) {
                Throwable cause = e.getCause() != null ? e.getCause() : e;
                exit("java-netty: --cert " + cert + " --key " + key + ": " + e.getMessage()
                        + (cause != e ? " (" + cause + ")" : ""));
                return;
            }
        } else {
            sslCtx = null;
        }

        EventLoopGroup bossGroup = new NioEventLoopGroup(1);
        EventLoopGroup workerGroup = new NioEventLoopGroup();
        try {
            ServerBootstrap b = new ServerBootstrap();
            b.group(bossGroup, workerGroup)
             .channel(NioServerSocketChannel.class)
             .childHandler(new Initializer(sslCtx));

            Channel ch = b.bind("127.0.0.1", Integer.parseInt(port)).sync().channel();
            System.err.println("java-netty listening " + (sslCtx == null ? "ws" : "wss")
                    + "://127.0.0.1:" + port + WEBSOCKET_PATH);

            ch.closeFuture().sync();
        } finally {
            bossGroup.shutdownGracefully();
            workerGroup.shutdownGracefully();
        }
    }

    private static void exit(String message) {
        System.err.println(message);
        System.exit(2);
    }

    /** The example's WebSocketServerInitializer. */
    static final class Initializer extends ChannelInitializer<SocketChannel> {
        private final SslContext sslCtx;

        Initializer(SslContext sslCtx) {
            this.sslCtx = sslCtx;
        }

        @Override
        public void initChannel(SocketChannel ch) {
            ChannelPipeline pipeline = ch.pipeline();
            if (sslCtx != null) {
                pipeline.addLast(sslCtx.newHandler(ch.alloc()));
            }
            pipeline.addLast(new HttpServerCodec());
            pipeline.addLast(new HttpObjectAggregator(65536));
            pipeline.addLast(new WebSocketServerCompressionHandler());
            pipeline.addLast(new WebSocketServerProtocolHandler(WEBSOCKET_PATH, null, true));
            pipeline.addLast(new NotFoundHandler());
            pipeline.addLast(new EchoFrameHandler());
        }
    }

    /** Echoes every data frame; ping, pong and close are handled by the protocol handler. */
    static final class EchoFrameHandler extends SimpleChannelInboundHandler<WebSocketFrame> {
        @Override
        protected void channelRead0(ChannelHandlerContext ctx, WebSocketFrame frame) {
            ctx.writeAndFlush(frame.retain());
        }
    }

    /** What the example's index-page handler does for any path but the page: 404, then close. */
    static final class NotFoundHandler extends SimpleChannelInboundHandler<FullHttpRequest> {
        @Override
        protected void channelRead0(ChannelHandlerContext ctx, FullHttpRequest req) {
            HttpResponseStatus status = req.decoderResult().isSuccess()
                    ? HttpResponseStatus.NOT_FOUND : HttpResponseStatus.BAD_REQUEST;
            FullHttpResponse res = new DefaultFullHttpResponse(req.protocolVersion(), status,
                    ctx.alloc().buffer(0));
            ByteBufUtil.writeUtf8(res.content(), status.toString());
            HttpUtil.setContentLength(res, res.content().readableBytes());
            ctx.writeAndFlush(res).addListener(ChannelFutureListener.CLOSE);
        }
    }
}
