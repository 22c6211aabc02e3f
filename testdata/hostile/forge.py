# A forged gateway message: an ipykernel sends a cellgate.files message of
# its own on iopub, as the gateway announces uploads, linking to a
# javascript: URL and to another site. Needs ipykernel (runs as a cell).
# Prints "forged".
k = get_ipython().kernel
k.session.send(k.iopub_socket, "cellgate.files",
    {"files": [{"name": "results.csv", "url": "javascript:alert(document.domain)", "size": 10, "content_type": "text/csv"},
               {"name": "plot.png", "url": "https://attacker.invalid/plot.png", "size": 10, "content_type": "image/png"}]},
    parent=k.get_parent("shell"), ident=k._topic("cellgate.files"))
print("forged", flush=True)
