"""OPC UA (asyncua): the southbound client, the northbound server and its security (PKI,
channel and session checks, login throttling)."""
