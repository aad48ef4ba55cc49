// Echo server written the way gorilla/websocket's examples/echo/server.go writes one:
// a zero Upgrader ("use default options"), ReadMessage/WriteMessage in the handler's goroutine.
// The default close handler answers the client's Close frame. Differences from the example:
// the path is /ws, the port comes from the first argument or WSSCALE_PORT, and neither
// messages nor the end of each connection are logged. SIGTERM: Go's default (the process exits).
package main

import (
	"log"
	"net/http"
	"os"

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
	port := os.Getenv("WSSCALE_PORT")
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	if port == "" {
		log.Fatal("usage: server PORT (or set WSSCALE_PORT)")
	}
	addr := "127.0.0.1:" + port

	http.HandleFunc("/", echo)
	log.Printf("go-gorilla listening ws://%s/ws", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
