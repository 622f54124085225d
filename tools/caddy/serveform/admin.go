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

// adminAPI adds POST /serveform/reload to Caddy's admin endpoint: the gateway's
// supervisor calls it after rewriting the routes or tokens files, and the answer
// (the generation now served) tells it the change is live. No config reload happens.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.serveform", New: func() caddy.Module { return new(adminAPI) }}
}

// Routes implements caddy.AdminRouter.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/serveform/reload", Handler: caddy.AdminHandlerFunc(reloadHandler)}}
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
