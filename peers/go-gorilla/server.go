// Echo server written the way gorilla/websocket's examples/echo/server.go writes one:
// a zero Upgrader ("use default options"), ReadMessage/WriteMessage in the handler's goroutine.
// The default close handler answers the client's Close frame. Differences from the example:
// the path is /ws, the port comes from the first argument or WSSCALE_PORT, and neither
// messages nor the end of each connection are logged. SIGTERM: Go's default (the process exits).
//
// wss://: `--cert FILE --key FILE` (PEM) after the port serve TLS on the same port with
// http.ListenAndServeTLS, as net/http's documentation writes it (crypto/tls with its defaults).
// The pair is loaded once before, only to name the file that is wrong and exit with status 2.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{} // use default options

func echo(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/ws" {
		http.Error(w, "Not found", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "Method not allowed", http.StatusMethodNotAllowed)
		return
	}
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Print("upgrade:", err)
		return
	}
	defer c.Close()
	for {
		mt, message, err := c.ReadMessage()
		if err != nil {
			break
		}
		err = c.WriteMessage(mt, message)
		if err != nil {
			log.Println("write:", err)
			break
		}
	}
}

func main() {
	log.SetFlags(0)
	usage := "usage: server PORT [--cert FILE --key FILE] (or set WSSCALE_PORT)"
	port, args := os.Getenv("WSSCALE_PORT"), os.Args[1:]
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		port, args = args[0], args[1:]
	}
	flags := flag.NewFlagSet("server", flag.ExitOnError)
	flags.Usage = func() { fmt.Fprintln(flags.Output(), usage); flags.PrintDefaults() }
	certFile := flags.String("cert", "", "PEM certificate (chain): serve wss://")
	keyFile := flags.String("key", "", "PEM private key of --cert")
	flags.Parse(args)
	if port == "" || flags.NArg() > 0 {
		flags.Usage()
		os.Exit(2)
	}
	if (*certFile == "") != (*keyFile == "") {
		fmt.Fprintln(os.Stderr, "--cert and --key go together")
		flags.Usage()
		os.Exit(2)
	}
	addr := "127.0.0.1:" + port

	http.HandleFunc("/", echo)
	if *certFile == "" {
		log.Printf("go-gorilla listening ws://%s/ws", addr)
		log.Fatal(http.ListenAndServe(addr, nil))
	}
	for _, file := range []struct{ flag, path string }{{"--cert", *certFile}, {"--key", *keyFile}} {
		if _, err := os.ReadFile(file.path); err != nil {
			log.Printf("go-gorilla: %s %v", file.flag, err)
			os.Exit(2)
		}
	}
	if _, err := tls.LoadX509KeyPair(*certFile, *keyFile); err != nil {
		log.Printf("go-gorilla: --cert %s --key %s: %v", *certFile, *keyFile, err)
		os.Exit(2)
	}
	log.Printf("go-gorilla listening wss://%s/ws", addr)
	log.Fatal(http.ListenAndServeTLS(addr, *certFile, *keyFile, nil))
}
