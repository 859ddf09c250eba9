"""/people: the household's enrolled people (known-people recognition, docs/privacy.md).

Enrolment stores embeddings made on the server, from an uploaded photo or from a stored event
detection; responses carry counts of embeddings, never the vectors.
"""

from __future__ import annotations

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.errors import ApiError, found, not_found
from inference_server.api.images import read_limited, read_multipart
from inference_server.api.params import EventDetectionPath, PersonPath
from inference_server.api.registry import API, IMAGE_TYPES
from inference_server.schemas import EnrollDetection, Person, PersonCreate, PersonList, PersonPatch
from inference_server.store import people


def _out(person: people.Person) -> Person:
    return Person(
        id=person.id,
        name=person.name,
        entity_id=person.entity_id,
        created_at=person.created_at,
        embeddings=person.embeddings,
    )


@API.route("GET", "/people", summary="List enrolled people", tag="people", response=PersonList)
async def list_people(request: web.Request, _: None, __: None) -> PersonList:
    return PersonList(people=[_out(p) for p in await people.list_all(ctx(request).pool)])


@API.route(
    "POST",
    "/people",
    summary="Add a person (then enrol photos or event detections of them)",
    tag="people",
    body=PersonCreate,
    response=Person,
    status=201,
    errors=[409],
)
async def create_person(request: web.Request, _: None, new: PersonCreate) -> Person:
    try:
        return _out(await people.create(ctx(request).pool, new.name, new.entity_id))
    except people.PersonExists as err:
        raise ApiError(409, "conflict", str(err)) from err


@API.route(
    "GET", "/people/{person_id}", summary="One person", tag="people", params=PersonPath, response=Person, errors=[404]
)
async def get_person(request: web.Request, p: PersonPath, _: None) -> Person:
    return _out(found(await people.get(ctx(request).pool, p.person_id), f"person {p.person_id}"))


@API.route(
    "PATCH",
    "/people/{person_id}",
    summary="Rename, or link / unlink their Home Assistant person entity",
    tag="people",
    params=PersonPath,
    body=PersonPatch,
    response=Person,
    errors=[404, 409],
)
async def patch_person(request: web.Request, p: PersonPath, change: PersonPatch) -> Person:
    clear = "entity_id" in change.model_fields_set and change.entity_id is None
    try:
        updated = await people.update(
            ctx(request).pool, p.person_id, name=change.name, entity_id=change.entity_id, clear_entity=clear
        )
    except people.PersonExists as err:
        raise ApiError(409, "conflict", str(err)) from err
    return _out(found(updated, f"person {p.person_id}"))


@API.route(
    "DELETE",
    "/people/{person_id}",
    summary="Forget a person: deletes them, every embedding of theirs and every recognition that named them",
    tag="people",
    params=PersonPath,
    status=204,
    errors=[404],
)
async def delete_person(request: web.Request, p: PersonPath, _: None) -> None:
    if not await people.delete(ctx(request).pool, p.person_id):
        raise not_found(f"person {p.person_id}")


@API.route(
    "POST",
    "/people/{person_id}/photos",
    summary="Enrol a photo of the person (JPEG or PNG, one person in it; raw or multipart `image`)",
    tag="people",
    params=PersonPath,
    body="image",
    response=Person,
    status=201,
    errors=[404, 409],
)
async def enroll_photo(request: web.Request, p: PersonPath, _: None) -> Person:
    context = ctx(request)
    if context.enroller is None:
        # 409, not 503: the server is up and will not change its mind until it is configured.
        raise ApiError(409, "recognition_off", "no face or body embedding model is configured")
    found(await people.get(context.pool, p.person_id), f"person {p.person_id}")
    limit = context.settings.max_image_bytes
    if request.content_type in IMAGE_TYPES:
        data = await read_limited(request, limit)
    elif request.content_type == "multipart/form-data":
        data, _name, _at = await read_multipart(request, limit)
    else:
        raise ApiError(415, "unsupported_media_type", "send image/jpeg, image/png or multipart/form-data")
    try:
        vectors = await context.enroller.vectors(data)
    except ValueError as err:
        raise ApiError(422, "no_person", str(err)) from err
    await people.add_embeddings(context.pool, p.person_id, vectors, origin="upload")
    return _out(found(await people.get(context.pool, p.person_id), f"person {p.person_id}"))


@API.route(
    "POST",
    "/events/{event_id}/detections/{n}/enroll",
    summary="Enrol an event's detection (index n of its `detections`) as a known person",
    tag="people",
    params=EventDetectionPath,
    body=EnrollDetection,
    response=Person,
    status=201,
    errors=[404, 409],
)
async def enroll_detection(request: web.Request, p: EventDetectionPath, body: EnrollDetection) -> Person:
    pool = ctx(request).pool
    async with pool.acquire() as conn, conn.transaction():
        found(await people.get(conn, body.person_id), f"person {body.person_id}")
        detection_id = found(
            await people.event_detection(conn, p.event_id, p.n), f"detection {p.n} of event {p.event_id}"
        )
        vectors = await people.detection_vectors(conn, detection_id)
        if not vectors:
            raise ApiError(
                409,
                "not_embedded",
                "this detection has no embeddings (not a person, recognition off, too small, or skipped under load)",
            )
        await people.add_embeddings(conn, body.person_id, vectors, origin="detection", detection_id=detection_id)
        person = found(await people.get(conn, body.person_id), f"person {body.person_id}")
    return _out(person)
