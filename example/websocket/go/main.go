// A RagSocket WebSocket client in Go (gorilla/websocket): asks one question, prints the
// answer as it streams, then the cited sources.
//
//	go run main.go -url ws://127.0.0.1:9380 -key KEY -chat CHAT_ID -question "How many days do I have to return a purchase?"
//
// The address, key, chat id and question may also come from RAGSOCKET_URL,
// RAGSOCKET_API_KEY, RAGSOCKET_CHAT_ID and RAGSOCKET_QUESTION. Exit status: 0 answered, 1 error frame or other failure,
// 2 refused (close 1008: bad key, unknown chat — do not retry).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// Frame is one server frame: {"code", "message", "data"} (plus "req_id" when the
// request had one, or {"type": "pong"} for an application ping).
type Frame struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
	ReqID   string          `json:"req_id"`
	Type    string          `json:"type"`
}

// Answer is the data of a delta or final frame (code 0).
type Answer struct {
	Answer    string `json:"answer"`
	Final     bool   `json:"final"`
	Seq       int    `json:"seq"`
	ID        string `json:"id"`
	SessionID string `json:"session_id"`
	Reference struct {
		DocAggs []struct {
			DocName string `json:"doc_name"`
			Count   int    `json:"count"`
		} `json:"doc_aggs"`
	} `json:"reference"`
}

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func main() {
	base := flag.String("url", env("RAGSOCKET_URL", "ws://127.0.0.1:9380"), "server address")
	key := flag.String("key", env("RAGSOCKET_API_KEY", ""), "API key")
	chatID := flag.String("chat", env("RAGSOCKET_CHAT_ID", ""), "chat id")
	question := flag.String("question", env("RAGSOCKET_QUESTION", "How many days do I have to return a purchase?"), "question")
	flag.Parse()
	if *key == "" || *chatID == "" {
		fmt.Fprintln(os.Stderr, "usage: main -key KEY -chat CHAT_ID [-url ws://HOST:PORT] [-question TEXT]")
		os.Exit(1)
	}

	url := strings.TrimRight(*base, "/") + "/api/v1/ws/chats/" + *chatID + "/completions"
	header := http.Header{"Authorization": {"Bearer " + *key}}
	conn, _, err := websocket.DefaultDialer.Dial(url, header)
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer conn.Close()
	// The server pings right after the upgrade. Answer pings, but ignore a failed pong:
	// when the server refuses the connection it closes at once, and the default handler
	// would turn that write error into a read error before the error frame and the 1008
	// close (still buffered) are read.
	conn.SetPingHandler(func(data string) error {
		conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(5*time.Second))
		return nil
	})

	request, _ := json.Marshal(map[string]any{"question": *question, "req_id": "go-1"})
	if err := conn.WriteMessage(websocket.TextMessage, request); err != nil {
		fmt.Fprintln(os.Stderr, "send:", err)
		os.Exit(1)
	}

	failed := false
	for {
		conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		_, message, err := conn.ReadMessage()
		if err != nil {
			if closeErr, ok := err.(*websocket.CloseError); ok && closeErr.Code == websocket.ClosePolicyViolation {
				fmt.Fprintf(os.Stderr, "refused (close 1008 %q): check the key and the chat id\n", closeErr.Text)
				os.Exit(2)
			}
			fmt.Fprintln(os.Stderr, "receive:", err)
			os.Exit(1)
		}
		var frame Frame
		if err := json.Unmarshal(message, &frame); err != nil {
			fmt.Fprintln(os.Stderr, "bad frame:", err)
			os.Exit(1)
		}
		switch {
		case frame.Type == "pong":
			continue
		case string(frame.Data) == "true": // the completion marker ends the request
			if failed {
				os.Exit(1)
			}
			return
		case frame.Code != 0: // an error frame; the marker follows (or a 1008 close)
			fmt.Fprintf(os.Stderr, "error %d: %s\n", frame.Code, frame.Message)
			failed = true
		default:
			var answer Answer
			if err := json.Unmarshal(frame.Data, &answer); err != nil {
				fmt.Fprintln(os.Stderr, "bad answer:", err)
				os.Exit(1)
			}
			fmt.Print(answer.Answer) // a delta: the new text only
			if answer.Final {
				names := []string{}
				for _, doc := range answer.Reference.DocAggs {
					names = append(names, doc.DocName)
				}
				fmt.Printf("\nsources: %s\n", strings.Join(names, ", "))
			}
		}
	}
}
