package serveform

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI adds two routes to Caddy's admin endpoint; neither reloads the config.
//
//   - POST /serveform/reload: the gateway's supervisor calls it after rewriting the routes or
//     tokens files; the answer (the generation now served) tells it the change is live.
//   - POST /serveform/ready: it calls this one after rewriting the ready file (its prober
//     changed a ready set); once answered, no new request goes to a replica it dropped.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.serveform", New: func() caddy.Module { return new(adminAPI) }}
}

// Routes implements caddy.AdminRouter.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/serveform/reload", Handler: caddy.AdminHandlerFunc(reloadHandler)},
		{Pattern: "/serveform/ready", Handler: caddy.AdminHandlerFunc(readyHandler)},
	}
}

func readyHandler(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	if err := reloadAllReady(); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusUnprocessableEntity, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write([]byte("{}\n"))
	return err
}

func reloadHandler(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	generations, err := reloadAll()
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusUnprocessableEntity, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"generations": generations})
}

var _ caddy.AdminRouter = adminAPI{}
