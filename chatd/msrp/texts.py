"""
What MSRP says to people, in Spanish as the seed's users read it: the error
texts, the notices, the greeting and the help of the mode for people.
docs/msrp.md lists them all; tests compare the wire with these.
"""

from __future__ import annotations

from chatd.limits import TOO_MANY_CONNECTIONS, TOO_MANY_FROM_ADDRESS
from chatd.msrp.codec import MAX_LINE, NAME_LENGTH

# The error texts (Spanish, as the seed's users read). docs/msrp.md lists
# them all.
ERR_NOT_FOUND = "Cliente objetivo no encontrado."
ERR_OPCODE = "Código de operación incorrecto."
ERR_FORMAT = "Error en el formato del mensaje."
ERR_FILE = "Error al recibir el archivo."
ERR_NAME_LENGTH = (
    f"Nombre inválido: debe tener exactamente {NAME_LENGTH} bytes."
)
ERR_NAME_RULE = (
    "Nombre inválido: solo caracteres imprimibles UTF-8, sin espacios,"
    " '|', '&' ni '\\', y no puede ser 'all'."
)
ERR_NAME_TIMEOUT = "No se recibió el nombre a tiempo."
ERR_TOO_MANY_CONNECTIONS = "El servidor tiene demasiadas conexiones; inténtalo más tarde."
ERR_TOO_MANY_FROM_ADDRESS = "Demasiadas conexiones desde tu dirección."
ERR_INTERNAL = "Error interno del servidor."
ERR_SHUTDOWN = "El servidor se está apagando."
ERR_NOT_UTF8 = f"{ERR_FORMAT} El texto no es UTF-8 válido."
ERR_EMPTY = f"{ERR_FORMAT} El texto está vacío."
ERR_BAD_FILENAME = (
    f"{ERR_FORMAT} El nombre de archivo está vacío o no es UTF-8 válido."
)
ERR_CUT_SHORT = f"{ERR_FORMAT} La conexión terminó a mitad de una trama."
ERR_USAGE = "Escribe: <nombre> <texto>, all <texto>, clientes o salir."
ERR_LINE_TOO_LONG = f"Línea demasiado larga (máximo {MAX_LINE} bytes)."

HUMAN_BYE = "Adiós."

#: What a person who connected and waits is told (a line of text, as in the
#: mode for people; the name is still read by the detection rule).
NAME_PROMPT = (
    f"Hola. Escribe tu nombre, de exactamente {NAME_LENGTH} bytes (por"
    " ejemplo ana1), y pulsa Enter. Después, help muestra la ayuda."
)

#: Words of the mode for people that ask for help.
CMD_HELP = ("help", "ayuda")

#: The answer to C{help} in the mode for people.
HUMAN_HELP = (
    "Escribe una orden por línea:",
    "  <nombre> <texto>  un mensaje a <nombre>, de cualquier protocolo",
    "  all <texto>       un mensaje a todos",
    "  clientes          quién está conectado",
    "  help              esta ayuda",
    "  salir             desconectarse",
)

# The typed commands of the mode for people (compared without case).
CMD_LIST = "clientes"
CMD_QUIT = "salir"


def errNameInUse(name: str) -> str:
    return f"El nombre {name} ya está en uso."


#: A login refused because the cluster's Redis cannot be reached (the name
#: cannot be checked across the cluster).
ERR_CLUSTER_LOGIN = (
    "No se puede iniciar sesión ahora: el clúster no está disponible."
    " Inténtalo de nuevo en unos segundos."
)


def errClusterUnavailable(name: str) -> str:
    """A message or file to a user of another node while the cluster is away."""
    return (
        f"No se pudo entregar a {name}: está en otro nodo y el clúster no"
        " está disponible ahora."
    )


def errNameProtected(name: str) -> str:
    return f"El nombre {name} pertenece a una cuenta registrada; elige otro."


#: The connection limits' refusals, in Spanish.
REFUSALS = {
    TOO_MANY_CONNECTIONS: ERR_TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_ADDRESS: ERR_TOO_MANY_FROM_ADDRESS,
}


def errRate(rate: float) -> str:
    return f"Demasiados mensajes: como máximo {rate:g} por segundo. No se entregó."


def errQueueFull(name: str) -> str:
    return f"No se pudo entregar a {name}: su cola de salida está llena."


def errReceivingFile(name: str) -> str:
    return f"No se pudo entregar a {name}: está recibiendo un archivo grande."


def errFileTooLarge(size: int, maximum: int) -> str:
    return f"Archivo demasiado grande: {size} bytes (máximo {maximum})."


def errNoFiles(name: str) -> str:
    return f"{name} no puede recibir archivos."


def errFileTooLargeFor(name: str, size: int, limit: int) -> str:
    return (
        f"Archivo demasiado grande para {name}: {size} bytes"
        f" (máximo {limit})."
    )


def errRemoteVariant(name: str) -> str:
    return (
        f"{name} usa la variante entre pares en otro nodo: no puede recibir"
        " archivos en flujo; no se entregó."
    )


def errRecipientGone(name: str, filename: str) -> str:
    return f"{ERR_FILE} {name} se desconectó; {filename} no se entregó."


def errNotDelivered(name: str, filename: str) -> str:
    return f"{ERR_FILE} {filename} no se pudo entregar a {name}."


def errFetching(filename: str) -> str:
    return f"{ERR_FILE} {filename}: chatd aún recoge otro archivo tuyo; no se entregó."


def errNoSuchAck(filename: str) -> str:
    return f"Ningún archivo {filename} espera confirmación."


def errAckSenderGone(filename: str) -> str:
    return f"El remitente de {filename} ya no está conectado."


def errFileStalled(filename: str, seconds: float) -> str:
    return f"{ERR_FILE} {filename} no avanzó en {seconds:g} s; no se entregó."


def humanGreeting(name: str) -> str:
    return f"Hola, {name}. {ERR_USAGE}"


def show(data: bytes) -> str:
    """Bytes from the wire, for an error text or a log line."""
    return data.decode("utf-8", "replace")
