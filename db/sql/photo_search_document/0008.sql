-- The words of a photo that keyword search matches: title and tags (weight A), description (B), photographer (C).
-- Each text is read three ways and the three are kept side by side: `simple` (every word as written, lower-cased:
-- names, places, words of other languages), `english` and `russian` (stemmed, stop words dropped: "lakes" is
-- 'lake', "озера" and "озеро" are both 'озер'). The russian configuration stems Latin words with the English
-- stemmer too, so the three never disagree on a word; keyword_query() reads a query the same three ways.
-- IMMUTABLE (to_tsvector with a named configuration is), so the generated column photos.search_document and
-- its GIN index can use it. array_to_string is only STABLE in general (element types' output functions), not
-- for text[]. Changing this body needs the column regenerated: a new migration drops and re-adds it.
CREATE OR REPLACE FUNCTION photo_search_document(title text, description text, tags text[], photographer text)
RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN
    setweight(to_tsvector('simple', coalesce(title, '')), 'A')
    || setweight(to_tsvector('english', coalesce(title, '')), 'A')
    || setweight(to_tsvector('russian', coalesce(title, '')), 'A')
    || setweight(to_tsvector('simple', coalesce(array_to_string(tags, ' , '), '')), 'A')
    || setweight(to_tsvector('english', coalesce(array_to_string(tags, ' , '), '')), 'A')
    || setweight(to_tsvector('russian', coalesce(array_to_string(tags, ' , '), '')), 'A')
    || setweight(to_tsvector('simple', coalesce(description, '')), 'B')
    || setweight(to_tsvector('english', coalesce(description, '')), 'B')
    || setweight(to_tsvector('russian', coalesce(description, '')), 'B')
    || setweight(to_tsvector('simple', coalesce(photographer, '')), 'C');
REVOKE ALL ON FUNCTION photo_search_document(text, text, text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION photo_search_document(text, text, text[], text) TO withsense_reader;
